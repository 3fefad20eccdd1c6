"""Pre-train the AV-HuBERT-architecture `VideoEncoder` on lip crops with a character CTC loss.

An LLM-based AVSR model wants a *frozen* lip encoder that already maps mouth movements to
speech-relevant features. No pretrained AV-HuBERT is available offline, so we train the
same architecture from scratch on the synthetic corpus with the cheapest objective that
makes it read lips: CTC over characters, on a linear head over the encoder's 25 Hz frames.
The head is saved too (under `ctc_head.*`) so the encoder can be evaluated again, but only
the encoder is meant to be reused (`avsr.models.video_encoder.load_video_encoder`).

Output folder::

    config.json        {"format", "encoder": VideoEncoderConfig as a dict, "vocab": [...],
                        "pretrain": the VideoPretrainConfig, "report": steps, seconds, losses, CER/WER}
    model.safetensors  the VideoEncoder's own state-dict keys, plus ctc_head.{weight,bias}
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avsr.backbones.folder import BackboneFolder
from avsr.data.batching import pack_batches
from avsr.data.dataset import read_manifest
from avsr.data.media import read_video
from avsr.data.transforms import AVHUBERT_CROP_SIZE, AVHUBERT_PIXEL_MEAN, AVHUBERT_PIXEL_STD, crop
from avsr.errors import AvsrError
from avsr.models.video_encoder import (FOLDER_CONFIG, FOLDER_FORMAT, VideoEncoder, VideoEncoderConfig,
                                       encoder_config_dict, read_encoder_folder, write_encoder_folder)
from avsr.text import character_error_rate, word_errors
from avsr.optimization import train_steps
from avsr.optimization import warmup_cosine_adamw

#: The encoder folder's config.json is its marker: written last, it carries the folder format.
FOLDER = BackboneFolder(FOLDER_CONFIG, "a pretrained video encoder folder", identity={"format": FOLDER_FORMAT},
                        error=AvsrError)

#: Index 0 is the CTC blank; then space, letters, digits, apostrophe (the label alphabet).
DEFAULT_VOCAB: tuple[str, ...] = ("<blank>", " ", *"abcdefghijklmnopqrstuvwxyz", *"0123456789", "'")


def default_encoder() -> VideoEncoderConfig:
    """A CPU-trainable encoder: AV-HuBERT's layout with the front end / 4 and a 3-layer D=192
    transformer, one BasicBlock per ResNet stage (twice the steps per CPU-second; measured
    better than ResNet-18's two in a 5-min budget), seeing the 88x88 crops at 44x44
    (`input_pool`: 2.7x faster steps and a better result, val CER 26.7 vs 37.1% after 400 steps).
    LayerDrop and input dropout are off."""
    return VideoEncoderConfig.tiny(input_pool=2, resnet_blocks=(1, 1, 1, 1), embed_dim=192, layers=3, heads=4, ffn_dim=768, conv_pos=8, conv_pos_groups=4,
                                   dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
                                   dropout_input=0.0, layerdrop=0.0)


@dataclass
class VideoPretrainConfig:
    """Settings of one CTC pre-training run (defaults: ~3.5 min on 2 CPU cores, 1,200 GRID clips)."""

    encoder: VideoEncoderConfig = field(default_factory=default_encoder)
    vocab: tuple[str, ...] = DEFAULT_VOCAB
    steps: int = 400  # ~2.7 epochs of 1,200 2-s clips (60k frames): 190-215 s on 2 CPU cores (44 x 44 input)
    batch_frames: int = 400  # frame budget per batch (B x longest T), after sorting by length;
    # small batches: with so few steps affordable, more updates beat bigger ones
    lr: float = 2e-3  # 1e-3 learnt too slowly for so few steps
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.02  # cosine decays to lr x this
    grad_clip: float = 5.0
    seed: int = 0
    crop: int = AVHUBERT_CROP_SIZE  # random crop in training, centre crop at eval
    hflip: bool = False  # AV-HuBERT flips at random; off: it slows a short run down
    time_masks: int = 0  # number of masked spans per training clip (0 = off)
    time_mask_max: int = 5  # longest span, frames; masked frames are set to 0 (the mean pixel)
    log_every: int = 25
    eval_batch_frames: int = 2000
    threads: int | None = 2  # torch.set_num_threads; None leaves it alone
    fast_stem: bool = True  # train the 3-D stem through `TapsConv3d` (same weights, much faster on CPU)

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):  # from config.json
            self.encoder = VideoEncoderConfig(**self.encoder)
        self.vocab = tuple(self.vocab)
        if len(set(self.vocab)) != len(self.vocab) or not self.vocab or self.vocab[0] != "<blank>":
            raise ValueError("vocab must be unique and start with the blank '<blank>'")
        if self.steps < 1 or self.batch_frames < 1 or self.crop < 1:
            raise ValueError("steps, batch_frames and crop must be >= 1")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["encoder"] = encoder_config_dict(self.encoder)  # tuples as lists
        out["vocab"] = list(self.vocab)
        return out


# --------------------------------------------------------------------------- text


class CharTokenizer:
    """Characters <-> ids for CTC; characters outside the vocabulary are dropped (and counted)."""

    def __init__(self, vocab: tuple[str, ...] = DEFAULT_VOCAB) -> None:
        self.vocab = tuple(vocab)
        self.index = {c: i for i, c in enumerate(self.vocab) if i > 0}

    def encode(self, text: str) -> list[int]:
        text = " ".join(text.lower().split())
        return [self.index[c] for c in text if c in self.index]

    def decode(self, ids) -> str:
        return "".join(self.vocab[i] for i in ids if i > 0)


def greedy_ctc_decode(log_probs: torch.Tensor, lengths: torch.Tensor | None = None) -> list[list[int]]:
    """Best path: argmax per frame, collapse repeats, drop blanks (id 0). Deterministic.

    log_probs (B, T, V) (any monotone scores work), lengths (B,) real frames -> B id lists.
    """
    best = log_probs.argmax(dim=-1)  # (B, T)
    batch, frames = best.shape
    if lengths is None:
        lengths = torch.full((batch,), frames, dtype=torch.long)
    out = []
    for row, length in zip(best.tolist(), lengths.tolist()):
        ids, prev = [], 0
        for tok in row[:length]:
            if tok != prev and tok != 0:
                ids.append(tok)
            prev = tok
        out.append(ids)
    return out


def error_rates(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    """Corpus-level (CER, WER): total edits / total reference characters or words."""
    return character_error_rate(refs, hyps), word_errors(refs, hyps).wer


# --------------------------------------------------------------------------- data


@dataclass
class Clip:
    video: np.ndarray  # (T, 96, 96) uint8, decoded once and kept in memory
    text: str
    ids: list[int]


def load_clips(root: str | Path, labels: str | Path, tokenizer: CharTokenizer) -> list[Clip]:
    """Decode every video of a label CSV once (only the video: audio is not needed here)."""
    clips = []
    for row in read_manifest(labels, root=root):
        clips.append(Clip(read_video(row.video), row.text, tokenizer.encode(row.text)))
    return clips


def preprocess(video: np.ndarray, size: int, rng: np.random.Generator | None = None, hflip: bool = False) -> torch.Tensor:
    """uint8 (T, H, W) -> float (T, size, size), normalised as AV-HuBERT expects.

    With `rng` the crop offset is random (training), else centred (evaluation)."""
    x = torch.from_numpy(np.ascontiguousarray(crop(video, size, rng))).float()  # (T, size, size)
    if hflip and rng is not None and rng.random() < 0.5:
        x = x.flip(-1)
    return (x / 255.0 - AVHUBERT_PIXEL_MEAN) / AVHUBERT_PIXEL_STD


def collate(clips: list[Clip], cfg: VideoPretrainConfig, rng: np.random.Generator | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> video (B, T, crop, crop) float zero-padded, lengths (B,), targets (sum L,), target_lengths (B,)."""
    videos = [preprocess(c.video, cfg.crop, rng, cfg.hflip) for c in clips]
    lengths = torch.tensor([v.shape[0] for v in videos], dtype=torch.long)
    batch = torch.zeros(len(videos), int(lengths.max()), cfg.crop, cfg.crop)  # (B, T, c, c)
    for b, v in enumerate(videos):
        if rng is not None:
            for _ in range(cfg.time_masks):
                span = int(rng.integers(0, min(cfg.time_mask_max, v.shape[0] // 4) + 1))
                start = int(rng.integers(0, v.shape[0] - span + 1))
                v[start:start + span] = 0.0
        batch[b, : v.shape[0]] = v
    targets = torch.tensor([i for c in clips for i in c.ids], dtype=torch.long)
    target_lengths = torch.tensor([len(c.ids) for c in clips], dtype=torch.long)
    return batch, lengths, targets, target_lengths


# --------------------------------------------------------------------------- model


class TapsConv3d(nn.Conv3d):
    """The stem's Conv3d(1 -> C, k=(kt, kh, kw), temporal stride 1) computed as a Conv2d whose
    input channels are the kt temporal taps. Same parameter (`weight`), same result up to float
    rounding, but torch's CPU Conv3d weight-gradient is ~10x slower than Conv2d's, and it is
    the largest cost of a training step. Used only while training (see `train_ctc`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 1, T, H, W) -> (B, C, T, H', W')
        batch, _, frames, height, width = x.shape
        kt, pt = self.kernel_size[0], self.padding[0]
        padded = F.pad(x[:, 0], (0, 0, 0, 0, pt, pt))  # (B, T + 2 pt, H, W)
        out_frames = padded.shape[1] - kt + 1
        taps = padded.unfold(1, kt, 1).permute(0, 1, 4, 2, 3).reshape(batch * out_frames, kt, height, width)
        y = F.conv2d(taps, self.weight[:, 0], self.bias, stride=self.stride[1:], padding=self.padding[1:])
        return y.view(batch, out_frames, *y.shape[1:]).transpose(1, 2)  # (B, C, T, H', W')


def _swap_stem(encoder: VideoEncoder, fast: bool) -> None:
    """Replace the stem conv by a `TapsConv3d` (fast=True) or a plain Conv3d, keeping its weight."""
    stem = encoder.feature_extractor_video.resnet.frontend3D
    old = stem[0]
    cls = TapsConv3d if fast else nn.Conv3d
    if type(old) is cls:
        return
    if fast and (old.in_channels != 1 or old.stride[0] != 1 or old.groups != 1 or old.dilation != (1, 1, 1)):
        return  # not the AV-HuBERT stem shape: keep the plain conv
    new = cls(old.in_channels, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
              bias=old.bias is not None)
    new.weight = old.weight  # the same Parameter: the optimizer and state dict are unaffected
    if old.bias is not None:
        new.bias = old.bias
    stem[0] = new


class VideoCTCModel(nn.Module):
    """VideoEncoder + Linear(D -> vocab) CTC head."""

    def __init__(self, encoder_cfg: VideoEncoderConfig, vocab_size: int) -> None:
        super().__init__()
        self.encoder = VideoEncoder(encoder_cfg)
        self.ctc_head = nn.Linear(encoder_cfg.embed_dim, vocab_size)

    def forward(self, video: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, T, H, W), lengths (B,) -> log_probs (B, T, V), lengths (B,) (1 output per frame)."""
        feats, padding_mask = self.encoder(video, lengths)  # (B, T, D), (B, T)
        log_probs = self.ctc_head(feats).log_softmax(dim=-1)  # (B, T, V)
        return log_probs, (~padding_mask).sum(dim=1)

    def export_state(self) -> dict[str, torch.Tensor]:
        """Encoder keys as the VideoEncoder names them (no prefix), head under `ctc_head.*`."""
        state = {k: v.detach().contiguous().clone() for k, v in self.encoder.state_dict().items()}
        state.update({f"ctc_head.{k}": v.detach().contiguous().clone() for k, v in self.ctc_head.state_dict().items()})
        return state


@torch.no_grad()
def transcribe(model: VideoCTCModel, clips: list[Clip], cfg: VideoPretrainConfig,
               tokenizer: CharTokenizer) -> list[str]:
    """Greedy CTC transcripts of `clips` (eval mode, centre crop), in input order."""
    was_training = model.training
    model.eval()
    hyps: list[str] = [""] * len(clips)
    for idx in pack_batches([c.video.shape[0] for c in clips], cfg.eval_batch_frames, cost="padded"):
        video, lengths, _, _ = collate([clips[i] for i in idx], cfg, None)
        log_probs, out_lengths = model(video, lengths)
        for i, ids in zip(idx, greedy_ctc_decode(log_probs, out_lengths)):
            hyps[i] = " ".join(tokenizer.decode(ids).split())
    model.train(was_training)
    return hyps


def train_ctc(model: VideoCTCModel, clips: list[Clip], cfg: VideoPretrainConfig, log=print) -> dict:
    """The training loop; returns a report (steps, seconds, initial/final loss, loss history)."""
    rng = np.random.default_rng(cfg.seed)
    # Batches of (clips x longest clip) <= batch_frames, shortest first: little padding.
    batches = pack_batches([c.video.shape[0] for c in clips], cfg.batch_frames, cost="padded")
    # Biases, norms and PReLU slopes do not decay. Warm-up, then cosine down to min_lr_ratio.
    opt, sched = warmup_cosine_adamw(model.named_parameters(), cfg.lr, cfg.weight_decay, cfg.warmup_steps,
                                     cfg.steps, floor=cfg.min_lr_ratio)
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)
    if cfg.fast_stem:
        _swap_stem(model.encoder, True)
    try:
        return _train_loop(model, clips, cfg, batches, opt, sched, ctc, rng, log)
    finally:
        _swap_stem(model.encoder, False)  # the saved / returned model is a plain VideoEncoder


def _train_loop(model, clips, cfg, batches, opt, sched, ctc, rng, log) -> dict:
    order: list[int] = []
    logged = 0  # steps already in a log line
    started = time.perf_counter()

    def loss_at(step: int) -> torch.Tensor:
        if not order:  # a new epoch: shuffle the (length-sorted) batches
            order.extend(rng.permutation(len(batches)).tolist())
        video, lengths, targets, target_lengths = collate([clips[i] for i in batches[order.pop()]], cfg, rng)
        log_probs, out_lengths = model(video, lengths)  # (B, T, V), (B,)
        return ctc(log_probs.transpose(0, 1), targets, out_lengths, target_lengths)  # CTCLoss wants (T, B, V)

    def log_progress(step: int, losses: list[float]) -> None:
        nonlocal logged
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            window = losses[logged:]
            log(f"step {step + 1}/{cfg.steps}  loss {sum(window) / len(window):.3f}  "
                f"lr {sched.get_last_lr()[0]:.2e}  {time.perf_counter() - started:.0f}s")
            logged = len(losses)

    history = train_steps(model, opt, sched, cfg.steps, loss_at, cfg.grad_clip, log_progress)
    tail = history[-max(1, min(cfg.log_every, len(history))):]
    return {"steps": cfg.steps, "train_seconds": round(time.perf_counter() - started, 1),
            "initial_train_loss": round(history[0], 4), "final_train_loss": round(sum(tail) / len(tail), 4),
            "loss_history": [round(x, 4) for x in history]}


# --------------------------------------------------------------------------- save / load


def save_pretrained(model: VideoCTCModel, cfg: VideoPretrainConfig, report: dict, out_dir: str | Path) -> Path:
    """The encoder folder (models.video_encoder) with the CTC head, vocabulary, settings and
    report, written into a temporary sibling and renamed into place: a reader never sees a
    half-written folder. An existing folder is replaced."""
    out_dir = Path(out_dir)
    with FOLDER.writing(out_dir) as tmp:  # write_encoder_folder writes the marker, config.json, last
        write_encoder_folder(tmp, model.export_state(), cfg.encoder,
                             {"vocab": list(cfg.vocab), "pretrain": cfg.to_dict(), "report": report})
    return out_dir


def is_complete(folder: str | Path) -> bool:
    """True when `folder` holds a finished encoder folder (its config.json, written last, is ours)."""
    return FOLDER.is_complete(folder)


def load_video_ctc_model(path: str | Path) -> tuple[VideoCTCModel, CharTokenizer]:
    """Encoder + CTC head (eval mode) and the tokenizer, to transcribe or re-evaluate."""
    config, state = read_encoder_folder(path)
    vocab = tuple(config["vocab"])
    model = VideoCTCModel(VideoEncoderConfig(**config["encoder"]), len(vocab))
    model.encoder.load_state_dict({k: v for k, v in state.items() if not k.startswith("ctc_head.")}, strict=True)
    model.ctc_head.load_state_dict({k[len("ctc_head."):]: v for k, v in state.items() if k.startswith("ctc_head.")},
                                   strict=True)
    return model.eval(), CharTokenizer(vocab)


# --------------------------------------------------------------------------- entry point


def pretrain_video_encoder(root: str | Path, train_csv: str | Path, val_csv: str | Path | None,
                           out_dir: str | Path, cfg: VideoPretrainConfig | None = None, log=print) -> Path:
    """Train VideoEncoder + CTC head on `train_csv`, report val CER/WER, save to `out_dir`."""
    cfg = cfg or VideoPretrainConfig()
    out_dir = Path(out_dir)
    FOLDER.check_replaceable(out_dir)  # before the long work: save_pretrained replaces a folder of ours
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = CharTokenizer(cfg.vocab)
    started = time.perf_counter()
    train = load_clips(root, train_csv, tokenizer)
    val = load_clips(root, val_csv, tokenizer) if val_csv else []
    decode_s = time.perf_counter() - started
    log(f"decoded {len(train)} train / {len(val)} val clips in {decode_s:.0f}s "
        f"({sum(c.video.shape[0] for c in train)} train frames)")
    model = VideoCTCModel(cfg.encoder, len(cfg.vocab))
    log(f"encoder {sum(p.numel() for p in model.encoder.parameters()) / 1e6:.2f}M parameters")
    report = train_ctc(model, train, cfg, log)
    report["decode_seconds"] = round(decode_s, 1)
    if val:
        t0 = time.perf_counter()
        hyps = transcribe(model, val, cfg, tokenizer)
        refs = [" ".join(c.text.lower().split()) for c in val]
        cer, wer = error_rates(refs, hyps)
        report.update(val_cer=round(cer, 4), val_wer=round(wer, 4), val_utterances=len(val),
                      eval_seconds=round(time.perf_counter() - t0, 1),
                      val_examples=[{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:5]])
        log(f"val CER {cer:.3f}  WER {wer:.3f}  ({len(val)} utterances)")
        for r, h in list(zip(refs, hyps))[:3]:
            log(f"  ref: {r}\n  hyp: {h}")
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    return save_pretrained(model, cfg, report, out_dir)
