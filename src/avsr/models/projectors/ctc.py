"""The CTC reader projector (LegoSLM, arXiv 2505.11352; docs/reading.md): the audio tokens are
the LLM's own input embeddings of the tokens a CTC head hears.

Why: a frozen LLM with a freshly initialised MLP projector writes fluent text that ignores its
audio tokens for thousands of steps (docs/quickstart-smollm2.md: 300 CPU steps, one sentence for
every input). A CTC head over the LLM's token ids, trained first on the cached encoder frames
without the LLM (`avsr.training.ctc_reader`, thousands of cheap steps), turns each frame into
posteriors over those ids; posteriors @ the LLM's embedding table are soft embeddings of the
transcript's own tokens, which the LLM reads at once. Frames are collapsed as in greedy CTC
decoding (blank frames dropped, a run of frames with the same best token becomes one token), so
the LLM sees about one token per spoken token instead of 12.5-25 per second.

The head (a `ReaderHead`) lives in its own folder (config.json + model.safetensors, written by
`avsr.training.ctc_reader`): its token ids, the encoder rate and compression it was trained at,
and its weights. `CTCProjector` loads it for the audio stream; the other modalities get the
Llama-AVSR MLP, and the audio path may add a residual MLP of the collapsed frames' features
(initialised to zero: training starts from the pure CTC path).

Cross-fitting (`model.ctc_cross_fit`, a reader trained with `--folds K`): the head reads its own
training sentences almost perfectly (it learns them by heart), so an LLM trained on its output
learns to copy, while on unseen speech the head misspells half the words. The folder then also
holds K fold heads, head k trained without the sentences of fold k (`fold_of`, a hash of the
transcript); in training each utterance is read by the head that never heard its sentence, so
the LLM learns from the errors it will meet. Decoding always uses the full head.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from avsr.errors import AvsrError
from avsr.models.projectors.mlp import MLP, Inputs
from avsr.text import normalise

READER_FORMAT = "avsr-ctc-reader"
READER_CONFIG = "config.json"  # written last: the folder's completion marker
READER_WEIGHTS = "model.safetensors"


def fold_weights(k: int) -> str:
    """The file of fold head k in a reader folder."""
    return f"fold-{k}.safetensors"


def fold_of(text: str, folds: int) -> int:
    """The cross-fitting fold (0 .. folds - 1) of a transcript: a hash of its normalised text, so
    one sentence spoken by several voices is in one fold, the same on every machine."""
    return zlib.crc32(normalise(text).encode("utf-8")) % folds


class ReaderError(AvsrError):
    """A CTC reader folder that is missing, incomplete or does not fit the model."""


class FrameConv(nn.Conv1d):
    """A convolution over time on frames (B, T, D_in) -> (B, T, D_out), same length (odd kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def check_kernel(kernel: int, hidden: int) -> None:
    """The one rule for a head's kernel (ValueError): odd, and wider than 1 only with a hidden layer."""
    if kernel < 1 or kernel % 2 == 0 or (kernel > 1 and not hidden):
        raise ValueError(f"kernel {kernel} must be odd and >= 1, and above 1 only with a hidden layer (hidden > 0)")


class ReaderHead(nn.Module):
    """Encoder frames (B, T, D_in) -> CTC logits (B, T, 1 + V): index 0 is the blank, index
    1 + j the LLM token `token_ids[j]`. A linear layer, optionally after one hidden ReLU layer
    that sees `kernel` neighbouring frames (1: each frame alone; 3: a frame and its two
    neighbours, 120 ms at 25 Hz, which reads unseen speech better: docs/reading.md);
    `dropout` on the input frames in training (1,200 sentences are memorised otherwise: Whisper's
    frames carry the whole sentence's context)."""

    def __init__(self, d_in: int, token_ids: list[int], hidden: int = 0, dropout: float = 0.0, kernel: int = 1):
        super().__init__()
        if not token_ids or len(set(token_ids)) != len(token_ids):
            raise ValueError("token_ids must be a non-empty list of distinct LLM token ids")
        check_kernel(kernel, hidden)
        self.d_in, self.hidden, self.kernel = d_in, hidden, kernel
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.long), persistent=False)  # (V,)
        first = FrameConv(d_in, hidden, kernel, padding=kernel // 2) if kernel > 1 else nn.Linear(d_in, hidden)
        layers = [first, nn.ReLU()] if hidden else []
        self.net = nn.Sequential(*layers, nn.Linear(hidden or d_in, 1 + len(token_ids)))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """x (B, T, D_in), pad (B, T) True = padding -> logits (B, T, 1 + V); padding frames are
        zeroed first, so a frame's logits do not depend on what else is in its batch."""
        return self.net(self.drop(x).masked_fill(pad[..., None], 0.0))  # (B, T, 1 + V)


def save_reader(head: ReaderHead, folder: str | Path, info: dict, fold_heads: list[ReaderHead] = ()) -> None:
    """Weights (the head's, then each fold head's), then config.json (the marker: token ids,
    sizes, number of folds, `info`) into `folder`."""
    folder = Path(folder)
    for h, name in [(head, READER_WEIGHTS), *((h, fold_weights(k)) for k, h in enumerate(fold_heads))]:
        save_file({k: v.detach().contiguous() for k, v in h.state_dict().items()}, str(folder / name))
    config = {"format": READER_FORMAT, "d_in": head.d_in, "hidden": head.hidden, "kernel": head.kernel,
              "dropout": head.drop.p, "token_ids": head.token_ids.tolist(), "folds": len(fold_heads), **info}
    (folder / READER_CONFIG).write_text(json.dumps(config, indent=1) + "\n", "utf-8")


def read_reader_config(folder: str | Path) -> dict:
    """config.json of a finished reader folder (ReaderError naming the folder otherwise)."""
    path = Path(folder) / READER_CONFIG
    try:
        config = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise ReaderError(f"model.ctc_reader: {folder} holds no readable {READER_CONFIG} ({err}); make one with "
                          "`avsr pretrain-reader`") from None
    if not isinstance(config, dict) or config.get("format") != READER_FORMAT:
        raise ReaderError(f"model.ctc_reader: {folder} is not a CTC reader folder (no format {READER_FORMAT!r})")
    return config


def load_reader(folder: str | Path, weights: str = READER_WEIGHTS) -> tuple[ReaderHead, dict]:
    """The trained head (eval mode; `weights`: a fold head's file instead) and its config."""
    config = read_reader_config(folder)
    try:
        head = ReaderHead(config["d_in"], config["token_ids"], config["hidden"], config.get("dropout", 0.0),
                          config.get("kernel", 1))
    except (KeyError, TypeError, ValueError) as err:
        raise ReaderError(f"model.ctc_reader: {Path(folder) / READER_CONFIG} does not describe a reader head "
                          f"({type(err).__name__}: {err})") from None
    if next(head.parameters()).is_meta:  # built on the meta device (avsr.models.dry_run): shapes only
        return head.eval(), config
    try:
        head.load_state_dict(load_file(str(Path(folder) / weights)), strict=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise ReaderError(f"model.ctc_reader: cannot load {Path(folder) / weights}: "
                          f"{str(err).splitlines()[0]}") from None
    return head.eval(), config


def collapse(best: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy-CTC runs: best (B, T) frame argmax (0 = blank), pad (B, T) True = padding ->
    run (B, T) index of the output token each frame joins (-1: dropped), out_pad (B, N) with N
    the most tokens of any row. A token is a run of frames with the same non-blank best id."""
    keep = (best != 0) & ~pad  # (B, T)
    prev = torch.cat([best.new_zeros(best.shape[0], 1), best[:, :-1]], dim=1)  # (B, T)
    starts = keep & ((best != prev) | torch.cat([keep.new_ones(keep.shape[0], 1), ~keep[:, :-1]], dim=1))
    run = starts.long().cumsum(1) - 1  # (B, T)
    run = torch.where(keep, run, torch.full_like(run, -1))
    counts = starts.sum(1)  # (B,)
    n = max(int(counts.max()) if counts.numel() else 0, 1)
    out_pad = torch.arange(n, device=best.device)[None, :] >= counts[:, None]  # (B, N)
    return run, out_pad


def greedy_ids(logits: torch.Tensor, pad: torch.Tensor) -> list[list[int]]:
    """Greedy CTC decoding of logits (B, T, 1 + V), pad (B, T): per row the head indices (1..V)
    of its collapsed runs, in order."""
    best = logits.argmax(-1)  # (B, T)
    run, _ = collapse(best, pad)
    starts = (run >= 0) & torch.cat([torch.ones_like(run[:, :1], dtype=torch.bool), run[:, 1:] != run[:, :-1]], 1)
    return [row[keep].tolist() for row, keep in zip(best, starts)]


def pool_runs(x: torch.Tensor, run: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of x (B, T, C) over the frames of each run (B, T) -> (B, N, C); empty slots zero."""
    b, _, c = x.shape
    index = torch.where(run >= 0, run, n)  # dropped frames go to a spare slot, cut below
    sums = x.new_zeros(b, n + 1, c).scatter_add_(1, index[..., None].expand(-1, -1, c), x)
    frames = x.new_zeros(b, n + 1).scatter_add_(1, index, torch.ones_like(index, dtype=x.dtype))
    return (sums / frames.clamp(min=1)[..., None])[:, :n]


class CTCProjector(nn.Module):
    """The audio stream through the CTC reader (collapsed soft token embeddings, plus an
    optional residual MLP); other modalities through an MLP each (Llama-AVSR).

    `embeddings`: the LLM's input embedding table (V_llm, D_llm), frozen; only the rows of the
    head's token ids are kept (a buffer rebuilt from the LLM, not saved). `top_k` > 0 keeps the
    k most probable tokens of each collapsed frame, renormalised. `train_head` False freezes the
    head at its pre-trained weights. `train_dropout` drops input frame features in training only,
    so the LLM learns from errors like those the reader makes on unseen speech. `cross_fit` reads
    each training utterance with the fold head that never heard its sentence (module docstring;
    `forward`'s `texts`). The projector
    returns its own padding (fewer tokens than frames) under aux["pad"], as the projector contract
    allows.
    """

    def __init__(self, d_in: dict[str, int], d_hidden: int, d_out: int, layer_norm: bool, *, reader: str,
                 embeddings: torch.Tensor, rate: int, compression: str, top_k: int = 0, residual: bool = True,
                 train_head: bool = True, train_dropout: float = 0.0, cross_fit: bool = False):
        super().__init__()
        head, config = load_reader(reader)
        if cross_fit and config.get("folds", 0) < 2:
            raise ReaderError(f"model.ctc_cross_fit: {reader} holds no fold heads; train it with "
                              "`avsr pretrain-reader --folds 2`")
        if (config.get("rate"), config.get("compression")) != (rate, compression):
            raise ReaderError(f"model.ctc_reader: {reader} was trained at audio rate {config.get('rate')} with "
                              f"{config.get('compression')}, but the model has rate {rate} with {compression}")
        self.audio = [name for name in d_in if name.split("@")[0] == "audio"]
        if len(self.audio) != 1:
            raise ReaderError("model.projector ctc reads one audio rate: give model.audio_rates one rate")
        if d_in[self.audio[0]] != head.d_in:
            raise ReaderError(f"model.ctc_reader: {reader} was trained on {head.d_in}-wide frames, but the model's "
                              f"audio frames are {d_in[self.audio[0]]} wide (another encoder or compression)")
        if max(config["token_ids"]) >= embeddings.shape[0]:  # (the config's list: also on the meta device)
            raise ReaderError(f"model.ctc_reader: {reader} names token ids beyond the LLM's vocabulary "
                              f"({embeddings.shape[0]}): it was trained for another LLM")
        self.head = head.train()
        self.head.requires_grad_(train_head)
        # frozen like the head (so not in checkpoints: AVSRModel.trainable_state_dict); training only
        self.fold_heads = nn.ModuleList([load_reader(reader, fold_weights(k))[0].requires_grad_(False)
                                         for k in range(config["folds"])] if cross_fit else [])
        self.top_k, self.train_dropout = top_k, train_dropout
        self.register_buffer("table", embeddings.detach()[head.token_ids].clone(), persistent=False)  # (V, D_llm)
        self.residual = MLP(d_in[self.audio[0]], d_hidden, d_out, layer_norm) if residual else None
        if self.residual is not None:  # starts as the pure CTC path
            nn.init.zeros_(self.residual.net[-1].weight)
            nn.init.zeros_(self.residual.net[-1].bias)
        self.mlps = nn.ModuleDict({m: MLP(d, d_hidden, d_out, layer_norm) for m, d in d_in.items()
                                   if m not in self.audio})
        self.config = config

    def read(self, x: torch.Tensor, pad: torch.Tensor,
             folds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames x (B, T, D_in), pad (B, T) -> soft token embeddings (B, N, D_llm), their padding
        (B, N), and each token's confidence (B, N): its best token's share of the run's posteriors.
        `folds` (B,): each row read by that fold head instead of the head (cross-fitting)."""
        heard = nn.functional.dropout(x, self.train_dropout, self.training)  # (B, T, D_in)
        if folds is None:
            logits = self.head(heard, pad)  # (B, T, 1 + V)
        else:
            # each row read by its fold's head only (rows are independent), then put back in batch order
            rows = [(folds == k).nonzero().flatten().to(x.device) for k in range(len(self.fold_heads))]
            reads = [h(heard[r], pad[r]) for h, r in zip(self.fold_heads, rows) if len(r)]  # (B_k, T, 1 + V)
            logits = torch.cat(reads)[torch.cat(rows).argsort()]  # (B, T, 1 + V)
        probs = logits.float().softmax(-1)  # (B, T, 1 + V)
        run, out_pad = collapse(probs.argmax(-1), pad)  # (B, T), (B, N)
        n = out_pad.shape[1]
        tokens = pool_runs(probs[..., 1:], run, n)  # (B, N, V) mean posteriors of each run, blank left out
        tokens = tokens / tokens.sum(-1, keepdim=True).clamp(min=1e-9)
        confidence = tokens.detach().max(-1).values.masked_fill(out_pad, 0.0)  # (B, N), before any top-k
        if self.top_k:
            top, idx = tokens.topk(min(self.top_k, tokens.shape[-1]), dim=-1)
            tokens = torch.zeros_like(tokens).scatter_(-1, idx, top)
            tokens = tokens / tokens.sum(-1, keepdim=True).clamp(min=1e-9)
        emb = tokens.to(self.table.dtype) @ self.table  # (B, N, D_llm)
        if self.residual is not None:
            emb = emb + self.residual(pool_runs(x, run, n)).to(emb.dtype)
        return emb.masked_fill(out_pad[..., None], 0.0), out_pad, confidence

    def active_parameters(self) -> int:
        audio = sum(p.numel() for p in self.head.parameters())
        audio += sum(p.numel() for p in self.residual.parameters()) if self.residual is not None else 0
        return max([audio, *(sum(p.numel() for p in mlp.parameters()) for mlp in self.mlps.values())])

    def forward(self, inputs: Inputs, texts: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
        """`texts`: the batch's transcripts, which pick each utterance's fold head in training when
        cross-fitting (the other projectors take none). aux: the padding of the read tokens
        ("pad"), and per utterance how many tokens the reader heard ("reader/tokens", (B,)) and
        their mean confidence ("reader/confidence", (B,); 0 when it heard none): what tells
        silence or noise from speech before the LLM writes anything."""
        folds = None
        if self.fold_heads and self.training:
            if texts is None:
                raise ValueError("a cross-fitted CTC projector needs the transcripts in training")
            folds = torch.tensor([fold_of(t, len(self.fold_heads)) for t in texts])  # (B,)
        out, pads, aux = {}, {}, {}
        for m, (x, pad) in inputs.items():
            if m in self.mlps:
                out[m] = self.mlps[m](x).masked_fill(pad[..., None], 0.0)  # (B, T, D_llm)
            else:
                out[m], pads[m], confidence = self.read(x, pad, folds)  # (B, N, D_llm), (B, N), (B, N)
                counts = (~pads[m]).sum(1)  # (B,)
                aux.update({"reader/tokens": counts, "reader/confidence": confidence.sum(1) / counts.clamp(min=1)})
        return out, {"pad": pads, **aux}
