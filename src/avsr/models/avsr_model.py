"""The LLM-based AVSR model (Llama-AVSR): frozen encoders -> compression -> projectors ->
[BOS, <audio> A </audio>, <video> V </video>, prompt, transcript, EOS] -> frozen LLM + LoRA.

One class serves ASR, VSR and AVSR (the task is chosen per batch) and every size, from the
tiny CPU backbones of the tests to Whisper-medium + AV-HuBERT Large + Llama 3.1-8B. Padding
is masked at every stage, so an utterance's hypothesis does not depend on its batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from avsr.errors import AvsrError
from avsr.models.beam_search import beam_search, unsupported_settings
from avsr.models.compression import MODES as COMPRESSION_MODES
from avsr.models.compression import compress
from avsr.models.lora import add_lora, set_active
from avsr.models.masks import lengths_to_padding_mask
from avsr.models.projectors import PROJECTORS, TOPOLOGIES, CTCProjector, build_projector
from avsr.models.tasks import (LORA_SCHEMES, MODALITIES, PROMPTS, TASKS, RatePair, adapter_names,
                               modalities_of, scale_name)
from avsr.settings import (COUNT, FLAG, FRACTION, NAME, NON_NEGATIVE, OPTIONAL_NAME, POSITIVE, POSITIVE_INT, TEXT,
                           SettingError, check_settings, list_of, one_of, setting)

SPECIAL_TOKENS = ("<audio>", "</audio>", "<video>", "</video>")
IGNORE = -100
LORA_CONVENTIONS = ("rank", "reduction")
MODALITY_TOKENS = ("own", "llm")
VIDEO_ADAPTER = "video"  # the adapter name of the video-encoder LoRA
VIDEO_LORA_TARGETS = ("q_proj", "v_proj")
# ASR through a CTC reader writes at most the reader's pieces + READER_SLACK tokens: its pieces are
# the LLM tokenizer's BPE with fewer merges, so a transcript it heard right is never longer in the
# LLM's own tokens; the slack is for pieces it missed. The cap stops the loops an LLM falls into
# where the reader heard little ("the pulley before the pulley before ..."; docs/reading.md).
READER_SLACK = 4
RATES = list_of(POSITIVE_INT, "a non-empty list of distinct positive integers", distinct=True)


@dataclass
class AVSRConfig:
    """Everything needed to rebuild the model (saved with every checkpoint)."""

    llm: str = setting("", TEXT)  # Hugging Face causal LM: a local folder (models are never fetched from a hub)
    audio_encoder: str | None = setting(None, OPTIONAL_NAME)  # Whisper folder (None: no audio tasks)
    video_encoder: str | None = setting(None, OPTIONAL_NAME)  # folder of `avsr pretrain-encoder --modality video`
    # Compression rates: audio tokens at 50/K Hz, video at 25/K Hz. Several rates per modality
    # train one model for all of them (Llama-MTSK / Omni-AVSR, "Matryoshka"); the first pair
    # is the one decoding uses unless told otherwise.
    audio_rates: tuple[int, ...] = setting((4,), RATES)
    video_rates: tuple[int, ...] = setting((2,), RATES)
    rate_projectors: bool = setting(True, FLAG)  # one projector per rate (papers); False: one shared by all rates
    compression: str = setting("avg-pooling", one_of(*COMPRESSION_MODES))  # or "stack"
    # "mlp" (Llama-AVSR), "smop" (sparse mixture, Llama-SMoP) or "ctc" (the audio through a CTC reader over
    # the LLM's tokens, LegoSLM; models/projectors/ctc.py): its folder, made by `avsr pretrain-reader`
    projector: str = setting("mlp", one_of(*PROJECTORS))
    ctc_reader: str | None = setting(None, OPTIONAL_NAME)
    ctc_top_k: int = setting(0, COUNT)  # >0: keep the k most probable tokens of each collapsed frame
    ctc_residual: bool = setting(True, FLAG)  # add an MLP of the frames (zero at the start) to the CTC path
    ctc_train_head: bool = setting(True, FLAG)  # fine-tune the reader's head with the LLM loss
    # dropout on the reader's input frames while the LLM trains: the head reads its own training
    # sentences almost without error, so the LLM would learn only to copy what it hears (0.3 for
    # 300 steps: 48.8 against 45.5% on the reading profile's test; docs/reading.md)
    ctc_train_dropout: float = setting(0.0, FRACTION)
    # each training utterance read by a fold head of the reader that never heard its sentence
    # (a reader of `avsr pretrain-reader --folds K`): the LLM learns from the reader's real errors
    ctc_cross_fit: bool = setting(False, FLAG)
    projector_hidden: int = setting(2048, POSITIVE_INT)
    projector_layer_norm: bool = setting(False, FLAG)
    smop_topology: str = setting("dedr", one_of(*TOPOLOGIES))  # "jejr", "jedr" or "dedr" (models/projectors/mixture.py)
    smop_experts: int = setting(4, POSITIVE_INT)  # experts per pool
    smop_top_k: int = setting(2, POSITIVE_INT)
    smop_load_balancing: float = setting(0.01, NON_NEGATIVE)  # coefficient of the load-balancing loss
    smop_z_loss: float = setting(0.001, NON_NEGATIVE)  # coefficient of the router z-loss
    # How lora_rank / lora_alpha (and video_lora_rank / video_lora_alpha) read: "rank" is
    # standard LoRA (bottleneck r = lora_rank, scale alpha / r); "reduction" is the papers' CLI
    # (`--rank R --alpha a`, docs/papers.md section 1.4): r = (width of the wrapped layer's input) / R
    # and scale a / R, e.g. R 32, alpha 4 on Llama 3.2-1B: r = 2048 / 32 = 64, scale 0.125.
    lora_convention: str = setting("rank", one_of(*LORA_CONVENTIONS))
    lora_rank: int = setting(64, POSITIVE_INT)
    lora_alpha: float = setting(8.0, POSITIVE)
    lora_dropout: float = setting(0.0, FRACTION)
    lora_targets: tuple[str, ...] = setting(("q_proj", "v_proj"), list_of(NAME, "a non-empty list of module names"))
    # LoRA adapter banks (see `adapter_names`): "ms" one global adapter (= Omni "s"), "ss" one
    # per scale (rate pair), "mss" global + per scale, "t" one per task, "st" shared + per task.
    lora_scheme: str = setting("ms", one_of(*LORA_SCHEMES))
    # LoRA on q_proj and v_proj of every video-encoder (AV-HuBERT) attention layer, trained with
    # the rest (Llama-AVSR VSR, Omni-AVSR: bottleneck 1024 / 16 = 64, scale 2). 0 = off: the
    # video encoder stays frozen. Read by lora_convention, like lora_rank / lora_alpha.
    video_lora_rank: int = setting(0, COUNT)
    video_lora_alpha: float = setting(128.0, POSITIVE)
    # Matryoshka c_ij per rate pair (audio-major order); () = all 1
    pair_weights: tuple[float, ...] = setting((), list_of(NON_NEGATIVE, "a list of non-negative numbers", empty=True))
    matryoshka_batched: bool = setting(True, FLAG)  # all rate pairs through the LLM as one batch (else one pass each)
    tasks: tuple[str, ...] = setting(TASKS, list_of(one_of(*TASKS), f"a non-empty list of distinct tasks from "
                                                                 f"{', '.join(TASKS)}", distinct=True))
    # Input options that reproduce the Llama-AVSR family's code (imported checkpoints set them;
    # avsr.models.audio_encoder, avsr.models.video_encoder): every clip's audio zero-padded to
    # 30 s for Whisper and its output cut after; the waveform normalised per clip; the video cut
    # to a multiple of its (one) rate before the encoder.
    pad_audio_to_30s: bool = setting(False, FLAG)
    audio_znorm: bool = setting(False, FLAG)
    video_trim: bool = setting(False, FLAG)
    # Where the embeddings of <audio> </audio> <video> </video> (and <pad>) live: "own", a small
    # trainable table of their own (the LLM's stays unresized); "llm", rows of the LLM's own
    # resized vocabulary, frozen, as in the authors' models (an LLM folder from `avsr import`).
    modality_tokens: str = setting("own", one_of(*MODALITY_TOKENS))
    llm_dtype: str = setting("float32", one_of("float32", "bfloat16", "float16", "float64"))

    def without_reader(self) -> "AVSRConfig":
        """The same model with an MLP projector in place of the CTC reader: what can be checked
        before the reader's folder exists (`avsr pretrain-reader` makes it)."""
        return replace(self, projector="mlp", ctc_cross_fit=False)

    def __post_init__(self) -> None:
        """Every setting's rule (see avsr.settings), then the rules that join two settings."""
        check_settings(self)
        n_pairs = len(self.audio_rates) * len(self.video_rates)
        if self.pair_weights and len(self.pair_weights) != n_pairs:
            raise SettingError("pair_weights", f"needs one weight per (audio, video) rate pair: {n_pairs}, "
                                               f"got {len(self.pair_weights)}")
        if not self.rate_projectors and self.compression == "stack" and (
                len(self.audio_rates) > 1 or len(self.video_rates) > 1):
            raise SettingError("rate_projectors", "false (one projector shared by several rates) needs compression "
                                                  "avg-pooling (stacking changes the width)")
        if self.video_lora_rank and "video" not in modalities_of(self.tasks):
            raise SettingError("video_lora_rank", f"needs a task that reads video (vsr or avsr); tasks are "
                                                  f"{', '.join(self.tasks)}")
        if self.projector == "ctc" and not self.ctc_reader:
            raise SettingError("ctc_reader", "must name the folder of `avsr pretrain-reader` when model.projector "
                                             "is ctc")
        if self.ctc_cross_fit and (self.projector != "ctc" or self.ctc_train_head):
            raise SettingError("ctc_cross_fit", "reads the training utterances with the CTC reader's frozen fold heads: "
                                                "it needs model.projector ctc and model.ctc_train_head false")
        if self.projector == "ctc" and "audio" not in modalities_of(self.tasks):
            raise SettingError("projector", f"ctc reads audio, but tasks are {', '.join(self.tasks)}")
        if self.video_trim and len(self.video_rates) != 1:
            raise SettingError("video_trim", f"cuts the video to a multiple of the one video rate; video_rates are "
                                             f"{list(self.video_rates)}")
        if self.projector == "smop" and self.smop_top_k > self.smop_experts:
            raise SettingError("smop_top_k", f"must be at most smop_experts ({self.smop_experts}), "
                                             f"got {self.smop_top_k}")


class AVSRModel(nn.Module):
    def __init__(self, cfg: AVSRConfig, audio_encoder: nn.Module | None, video_encoder: nn.Module | None,
                 llm: nn.Module, tokenizer):
        super().__init__()
        self.cfg = cfg
        self.encoders = nn.ModuleDict({k: v for k, v in (("audio", audio_encoder), ("video", video_encoder)) if v is not None})
        for p in self.encoders.parameters():
            p.requires_grad_(False)
        for task in cfg.tasks:
            missing = [m for m in MODALITIES[task] if m not in self.encoders]
            if missing:
                raise ValueError(f"task {task} needs a {missing[0]} encoder")
        self.llm = llm
        for p in self.llm.parameters():
            p.requires_grad_(False)
        d_llm = llm.get_input_embeddings().embedding_dim
        self.rates = {"audio": tuple(cfg.audio_rates), "video": tuple(cfg.video_rates)}
        d_in = {self.stream(m, r): enc.output_dim * (r if cfg.compression == "stack" else 1)
                for m, enc in self.encoders.items() for r in self.rates[m]}
        self.projector = build_projector(cfg, d_in, d_llm, llm.get_input_embeddings().weight)
        adapters = dict.fromkeys(n for t in cfg.tasks for pair in self.pairs(t)
                                 for n in adapter_names(cfg.lora_scheme, t, pair))
        rank, alpha = lora_size(cfg.lora_convention, d_llm, cfg.lora_rank, cfg.lora_alpha, "lora_rank")
        check_lora_fit(self.llm, tuple(cfg.lora_targets), rank, cfg.lora_rank, "lora_rank",
                       f"LLM ({cfg.llm})" if cfg.llm else "LLM")
        add_lora(self.llm, tuple(cfg.lora_targets), tuple(adapters), rank, alpha, cfg.lora_dropout)
        if cfg.video_lora_rank:  # trainable adapters inside the otherwise frozen video encoder
            video = self.encoders["video"]
            rank, alpha = lora_size(cfg.lora_convention, video.output_dim, cfg.video_lora_rank, cfg.video_lora_alpha,
                                    "video_lora_rank")
            check_lora_fit(video, VIDEO_LORA_TARGETS, rank, cfg.video_lora_rank, "video_lora_rank", "video encoder")
            add_lora(video, VIDEO_LORA_TARGETS, (VIDEO_ADAPTER,), rank, alpha, cfg.lora_dropout)
        self.tokenizer = tokenizer
        self._add_special_tokens(d_llm)

    # ------------------------------------------------------------------ tokens
    def _add_special_tokens(self, d_llm: int) -> None:
        """<audio> </audio> <video> </video> (+ <pad> if missing) with their own trainable embeddings.

        The LLM's embedding table stays frozen and unresized: new tokens live in a small
        table of their own, looked up by id (robust to vocabularies padded beyond the
        tokenizer's length). With `modality_tokens` "llm" they are rows of the LLM's table.
        """
        tok = self.tokenizer
        self.bos = tok.bos_token_id
        self.eos = tok.eos_token_id
        self.prompt_ids = {t: tok(PROMPTS[t], add_special_tokens=False)["input_ids"] for t in TASKS}
        if self.cfg.modality_tokens == "llm":
            self._llm_special_tokens()
            return
        new = list(SPECIAL_TOKENS)
        if tok.pad_token is None:
            new.append("<pad>")
        tok.add_tokens(new, special_tokens=True)
        if tok.pad_token is None:
            tok.pad_token = "<pad>"
        self.special = {t: tok.convert_tokens_to_ids(t) for t in new}
        ids = torch.tensor(list(self.special.values()))
        lookup = torch.full((max(self.special.values()) + 1,), -1, dtype=torch.long)  # sized from ints (any device)
        lookup[ids] = torch.arange(len(ids))
        self.register_buffer("new_token_index", lookup, persistent=False)
        base = self.llm.get_input_embeddings().weight.detach()
        # The noise is drawn on the CPU (one seeded stream whatever the device, even "meta", where
        # a CPU generator cannot draw), then joins the table's device.
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn(len(ids), d_llm, generator=gen, device="cpu").to(base.device)
        init = base.mean(0, keepdim=True) + 0.02 * base.std() * noise
        self.new_token_embed = nn.Parameter(init.to(base.dtype))  # (n_new, D)

    def _llm_special_tokens(self) -> None:
        """The LLM's vocabulary already holds the special tokens (an imported, resized table)."""
        tok, rows = self.tokenizer, self.llm.get_input_embeddings().num_embeddings
        vocab = tok.get_vocab()
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing or tok.pad_token is None:
            raise AvsrError(f"model.llm {self.cfg.llm}: modality_tokens llm, but the LLM's tokenizer has no {', '.join(missing or ['pad token'])}; "
                             "it needs the LLM folder `avsr import` writes, whose vocabulary holds them")
        self.special = {t: vocab[t] for t in SPECIAL_TOKENS}
        if max(self.special.values()) >= rows:
            raise AvsrError(f"model.llm {self.cfg.llm}: modality_tokens llm, but the tokenizer's special tokens reach id {max(self.special.values())}, "
                             f"but the LLM's embedding table has {rows} rows")

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (...,) -> embeddings (..., D), new special tokens from their own table."""
        table = self.llm.get_input_embeddings()
        if self.cfg.modality_tokens == "llm":
            return table(ids)
        lookup = self.new_token_index
        slot = lookup[ids.clamp(max=lookup.numel() - 1)]
        slot = torch.where(ids < lookup.numel(), slot, -1)  # row of the new-token table; -1 = LLM token
        base = table(torch.where(slot >= 0, 0, ids))
        return torch.where((slot >= 0)[..., None], self.new_token_embed[slot.clamp(min=0)].to(base.dtype), base)

    def _ids(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------ stages
    def stream(self, modality: str, rate: int) -> str:
        """Projector input name: "audio@4" with a projector per rate, else the modality."""
        per_rate = self.cfg.rate_projectors and len(self.rates[modality]) > 1
        return f"{modality}@{rate}" if per_rate else modality

    def encoder_trains(self, modality: str) -> bool:
        """Whether the modality's encoder holds trainable parameters (its LoRA), so it must run
        with gradients and cannot be replaced by cached features."""
        return modality == "video" and self.cfg.video_lora_rank > 0

    def pairs(self, task: str) -> list[RatePair]:
        """Every trained rate pair of a task, audio-major; None for a modality it does not use."""
        audio = self.rates["audio"] if "audio" in MODALITIES[task] else (None,)
        video = self.rates["video"] if "video" in MODALITIES[task] else (None,)
        return [RatePair(a, v) for a in audio for v in video]

    def default_pair(self, task: str) -> RatePair:
        return self.pairs(task)[0]

    def encode(self, batch: dict, task: str, pairs: list[RatePair] | None = None) -> tuple[dict, dict]:
        """Tokens of a task at each rate pair: {pair: {m: (tokens (B, T', D_llm), pad (B, T'))}}, aux.

        Each encoder runs once (or its cached output is used); its output is pooled at every
        rate the pairs need and projected. Inputs that share a projector (one shared by all
        rates) go through it in one call, stacked along the batch.
        """
        pairs = pairs or [self.default_pair(task)]
        needed = {m: sorted({p[i] for p in pairs}) for i, m in enumerate(("audio", "video")) if m in MODALITIES[task]}
        inputs: dict[str, list] = {}  # projector input name -> [(modality, rate, x (B, T', ·), pad (B, T'))]
        for m, rates in needed.items():
            if f"{m}_features" in batch:  # precomputed by the frozen encoder (training.feature_cache)
                if self.encoder_trains(m):
                    raise ValueError(f"precomputed {m} features would bypass the {m} encoder's LoRA "
                                     f"(video_lora_rank): run the encoder (no feature cache)")
                feats = batch[f"{m}_features"]  # (B, T, D_enc)
                pad = lengths_to_padding_mask(batch[f"{m}_feature_lengths"], feats.shape[1])
            else:  # with gradients only when the encoder holds trained adapters (video_lora_rank)
                with contextlib.nullcontext() if self.encoder_trains(m) else torch.no_grad():
                    feats, pad = self.encoders[m](batch[m], batch[f"{m}_lengths"])  # (B, T, D_enc)
            for r in rates:
                x, p = compress(feats, pad, r, self.cfg.compression)  # (B, T', ·), (B, T')
                inputs.setdefault(self.stream(m, r), []).append((m, r, x, p))
        joined = {name: _stack_batches([(x, p) for _, _, x, p in group]) for name, group in inputs.items()}
        texts = {"texts": batch.get("text")} if isinstance(self.projector, CTCProjector) else {}  # its cross-fitting
        projected, aux = self.projector(joined, **texts)  # {name: (n_rates * B, T_max, D_llm)}
        pads = aux.pop("pad", {})  # {name: (n_rates * B, N)} where the projector shortened the sequence
        by_rate: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for name, group in inputs.items():
            b = group[0][2].shape[0]
            for j, (m, r, x, p) in enumerate(group):
                if name in pads:
                    by_rate[(m, r)] = (projected[name][j * b:(j + 1) * b], pads[name][j * b:(j + 1) * b])
                else:
                    by_rate[(m, r)] = (projected[name][j * b:(j + 1) * b, : x.shape[1]], p)
        out = {pair: {m: by_rate[(m, pair[i])] for i, m in enumerate(("audio", "video")) if m in needed}
               for pair in pairs}
        return out, aux

    def targets(self, texts: list[str]) -> list[list[int]]:
        """Transcript token ids + EOS: what the LLM is trained to write."""
        return [ids + [self.eos] for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def assemble(self, tokens: dict, task: str, targets: list[list[int]] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Build LLM inputs. With targets (training; see `targets`): right-padded, labels on
        transcript + EOS. Without (decoding): the prefix only, left-padded for generation.
        Returns inputs_embeds (B, L, D), attention_mask (B, L), labels (B, L) or None.
        """
        b = next(iter(tokens.values()))[0].shape[0]
        seqs, labels = [], []
        for i in range(b):
            parts = [self.embed(self._ids([self.bos]))] if self.bos is not None else []
            for m in MODALITIES[task]:
                tok, pad = tokens[m]
                parts += [self.embed(self._ids([self.special[f"<{m}>"]])), tok[i][~pad[i]],
                          self.embed(self._ids([self.special[f"</{m}>"]]))]
            parts.append(self.embed(self._ids(self.prompt_ids[task])))
            prefix = sum(p.shape[0] for p in parts)
            label = [IGNORE] * prefix
            if targets is not None:
                parts.append(self.embed(self._ids(targets[i])))
                label += targets[i]
            seqs.append(torch.cat(parts))
            labels.append(label)
        length = max(s.shape[0] for s in seqs)
        d = seqs[0].shape[1]
        embeds = seqs[0].new_zeros(b, length, d)
        mask = torch.zeros(b, length, dtype=torch.long, device=embeds.device)
        label_t = torch.full((b, length), IGNORE, dtype=torch.long, device=embeds.device)
        for i, s in enumerate(seqs):
            n = s.shape[0]
            if targets is not None:  # right padding
                embeds[i, :n], mask[i, :n] = s, 1
                label_t[i, :n] = torch.tensor(labels[i], device=embeds.device)
            else:  # left padding
                embeds[i, length - n:], mask[i, length - n:] = s, 1
        return embeds, mask, (label_t if targets is not None else None)

    # ------------------------------------------------------------------ API
    def forward(self, batch: dict, task: str, pair: RatePair | None = None) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy over transcript and EOS tokens, plus auxiliary terms.

        At one rate pair when `pair` is given or only one is trained; otherwise the
        Matryoshka loss (Llama-MTSK): (1 / P) * sum_p c_p * CE_p over the task's P rate pairs,
        with every pair's sequences in one LLM batch (`matryoshka_batched`) or one pass each.
        aux gets the per-pair losses as `loss/<scale>`.
        """
        pairs = [pair] if pair is not None else self.pairs(task)
        tokens, aux = self.encode(batch, task, pairs)
        targets = self.targets(batch["text"])  # tokenised once for every pair
        if len(pairs) > 1 and self.cfg.matryoshka_batched:
            losses = self._batched_losses(tokens, task, targets)
        else:
            losses = []
            for p in pairs:
                set_active(self.llm, adapter_names(self.cfg.lora_scheme, task, p))
                embeds, mask, labels = self.assemble(tokens[p], task, targets)
                losses += labelled_losses(self.llm, embeds, mask, labels)
        weights = self.pair_weights(task, pairs) if len(pairs) > 1 else [1.0]
        loss = sum(w * l for w, l in zip(weights, losses)) / len(losses)
        if len(pairs) > 1:
            aux.update({f"loss/{scale_name(task, p)}": l.detach() for p, l in zip(pairs, losses)})
        return loss, aux

    def pair_weights(self, task: str, pairs: list[RatePair]) -> list[float]:
        """c_p for each pair: config `pair_weights` for AVSR pairs (audio-major), else 1."""
        if not self.cfg.pair_weights or task != "avsr":
            return [1.0] * len(pairs)
        table = dict(zip(self.pairs("avsr"), self.cfg.pair_weights))
        return [float(table[p]) for p in pairs]

    def _batched_losses(self, tokens: dict, task: str, targets: list[list[int]]) -> list[torch.Tensor]:
        """Every pair's sequences in one LLM pass: blocks of B rows, each block with its own
        adapters (shared ones on all rows); per-pair mean token losses, as one pass each would give."""
        pairs = list(tokens)
        embeds, mask, labels = zip(*(self.assemble(tokens[p], task, targets) for p in pairs))  # each (B, L_p, ·)
        b = embeds[0].shape[0]
        embeds, mask, labels = _pad_cat(embeds, 0.0), _pad_cat(mask, 0), _pad_cat(labels, IGNORE)  # (P*B, L, ·)
        names = [adapter_names(self.cfg.lora_scheme, task, p) for p in pairs]
        common = tuple(n for n in names[0] if all(n in other for other in names))
        set_active(self.llm, common, rows=[(tuple(n for n in own if n not in common), slice(i * b, (i + 1) * b))
                                           for i, own in enumerate(names)])
        try:
            return labelled_losses(self.llm, embeds, mask, labels, blocks=len(pairs))
        finally:
            set_active(self.llm, names[0])  # never leave row-restricted adapters behind


    @torch.no_grad()
    def generate(self, batch: dict, task: str, num_beams: int = 4, max_new_tokens: int | torch.Tensor = 32,
                 do_sample: bool = False, return_aux: bool = False, pair: RatePair | None = None,
                 return_scores: bool = False, search: str = "avsr", **kwargs) -> list[str] | tuple[list[str], dict]:
        """Deterministic beam search by default (no sampling, whatever the LLM's defaults).

        `search` "avsr" (default): our batched beam search (`avsr.models.beam_search`): the prefix
        runs once per utterance instead of once per beam; same hypotheses and scores as
        transformers' (num_beams=1: greedy). It takes only `length_penalty` from kwargs and
        refuses others, sampling, and LLM generation settings it does not follow.
        "transformers": the LLM's own `generate` (the papers' code path; sampling; any kwargs).
        `pair` chooses the rates (elastic inference: any trained pair; default the first).
        Only that scale's projectors and adapters run. With return_aux, also the projector's
        aux dict (e.g. the SMoP expert-usage sums). With return_scores, (texts, aux) where
        aux["scores"] (B,) float32 is each hypothesis's length-normalised log-probability (see
        `sequence_scores`): an LLM recogniser writes fluent text whatever it hears, so a low
        score is the hint that a transcript may be made up. The texts are the same either way.
        search="avsr" also gives aux["token_logp"]: per hypothesis, (S_i,) its tokens' log-probabilities
        (EOS included), and takes `max_new_tokens` per utterance as well, a (B,) tensor; ASR
        through a CTC reader is held to the reader's pieces + READER_SLACK tokens there.
        """
        if search not in ("avsr", "transformers"):
            raise ValueError(f"search must be 'avsr' or 'transformers', got {search!r}")
        if search == "avsr":
            if do_sample:
                raise ValueError("search='avsr' does not sample: pass search='transformers' for sampling")
            if set(kwargs) - {"length_penalty"}:
                raise ValueError(f"search='avsr' does not take {', '.join(sorted(set(kwargs) - {'length_penalty'}))}; "
                                 "pass search='transformers' for them")
            if unsupported := unsupported_settings(self.llm.generation_config):
                raise ValueError(f"the LLM's generation_config sets {', '.join(unsupported)}, which search='avsr' "
                                 "does not follow; pass search='transformers'")
        elif isinstance(max_new_tokens, torch.Tensor):
            raise ValueError("a max_new_tokens per utterance needs search='avsr'")
        pair = self.check_pair(task, pair)
        tokens, aux = self.encode(batch, task, [pair])
        set_active(self.llm, adapter_names(self.cfg.lora_scheme, task, pair))
        embeds, mask, _ = self.assemble(tokens[pair], task, None)
        aux["llm_input_tokens"] = mask.sum(1)  # (B,) prefix length: BOS, blocks, prompt
        if search == "avsr":
            if task == "asr" and "reader/tokens" in aux:  # the CTC reader's pieces bound the transcript's length
                max_new_tokens = torch.minimum(
                    torch.as_tensor(max_new_tokens, dtype=torch.long).expand(len(aux["reader/tokens"])),
                    aux["reader/tokens"].long().cpu() + READER_SLACK + 1).to(embeds.device)  # (B,), EOS included
            penalty = kwargs.get("length_penalty", self.llm.generation_config.length_penalty)
            found = beam_search(self.llm, embeds, mask, num_beams, max_new_tokens, self.eos,
                                self.tokenizer.pad_token_id, 1.0 if penalty is None else penalty)
            out = found.tokens  # (B, S)
            if return_scores:
                aux["scores"] = found.scores  # (B,)
                aux["token_logp"] = [row[:n] for row, n in zip(found.token_logp, found.lengths.tolist())]  # B x (S_i,)
        else:
            out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, num_beams=num_beams,
                                    max_new_tokens=max_new_tokens, do_sample=do_sample,
                                    eos_token_id=self.eos, pad_token_id=self.eos,  # fed to finished rows: an
                                    # id the LLM knows (the tokenizer's <pad> may be one of our added tokens)
                                    bos_token_id=self.bos, **({"temperature": None, "top_p": None, "top_k": None}
                                                              if not do_sample else {}),
                                    **({"output_scores": True, "return_dict_in_generate": True} if return_scores
                                       else {}), **kwargs)
            if return_scores:
                aux["scores"] = self.sequence_scores(out, num_beams)
                out = out.sequences
        texts = [" ".join(t.lower().split()) for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        if task == "asr" and "reader/tokens" in aux:  # the CTC reader heard no speech token: nothing to write
            heard = aux["reader/tokens"].tolist()  # (without it the LLM writes a sentence of its own)
            texts = [t if n else "" for t, n in zip(texts, heard)]
            if "token_logp" in aux:
                aux["token_logp"] = [row if n else row[:0] for row, n in zip(aux["token_logp"], heard)]
        return (texts, aux) if return_aux or return_scores else texts

    def sequence_scores(self, out, num_beams: int) -> torch.Tensor:
        """(B,) float32 score of each returned hypothesis from a transformers `generate(...,
        output_scores=True, return_dict_in_generate=True)` output (search="avsr" returns the same
        scores itself). Beam search: its own `sequences_scores`, the sum of the token
        log-probabilities (EOS included) divided by the length (to the LLM's length_penalty, 1 by
        default). Greedy: the mean token log-probability up to and including the first EOS,
        computed from the step scores."""
        if num_beams > 1:
            return out.sequences_scores.float()
        new = out.sequences[:, -len(out.scores):]  # (B, S) the generated tokens (decoder-only: all of them)
        logp = torch.stack([F.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)  # (B, S, V)
        token = logp.gather(2, new[..., None])[..., 0]  # (B, S)
        ended = (new == self.eos).long().cumsum(1)  # (B, S) EOS seen at or before each step
        keep = (ended == 0) | ((ended == 1) & (new == self.eos))  # up to and including the first EOS
        return (token * keep).sum(1) / keep.sum(1).clamp(min=1)

    def check_pair(self, task: str, pair: RatePair | None) -> RatePair:
        """The task's rates from a full (audio, video) pair; None = the default pair."""
        if pair is None:
            return self.default_pair(task)
        pair = RatePair(*(r if m in MODALITIES[task] else None for m, r in zip(("audio", "video"), pair)))
        if pair not in self.pairs(task):
            trained = ", ".join(scale_name(task, p) for p in self.pairs(task))
            raise ValueError(f"{task} was not trained at rates {scale_name(task, pair)}; trained: {trained}")
        return pair

    def train(self, mode: bool = True) -> "AVSRModel":
        """Frozen encoders and LLM stay in eval mode (no dropout), unlike the reference."""
        super().train(mode)
        self.encoders.eval()
        self.llm.eval()
        return self

    # ------------------------------------------------------------------ checkpoints
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().cpu().contiguous() for k, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = {k for k, p in self.named_parameters() if p.requires_grad}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"checkpoint does not fit this model: missing {missing[:5]}, unexpected {extra[:5]}")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)

    def parameter_counts(self) -> dict[str, int]:
        """Trainable and frozen parameters; projector: all of it, and what one token runs
        through (`projector_active`: k of E experts for the sparse mixture)."""
        counts = {"trainable": 0, "frozen": 0}
        for p in self.parameters():
            counts["trainable" if p.requires_grad else "frozen"] += p.numel()
        counts["projector"] = sum(p.numel() for p in self.projector.parameters())
        counts["projector_active"] = self.projector.active_parameters()
        return counts


@torch.no_grad()
def frozen_features(encoder: nn.Module, batch: dict, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A frozen encoder's output on a batch in the form `AVSRModel.encode` takes precomputed, as
    batch["<m>_features"] and batch["<m>_feature_lengths"]: features (B, T, D_enc), lengths (B,)."""
    feats, pad = encoder(batch[modality], batch[f"{modality}_lengths"])  # (B, T, D_enc), (B, T)
    return feats, (~pad).sum(1)


def lora_size(convention: str, width: int, rank: int, alpha: float, key: str = "lora_rank") -> tuple[int, float]:
    """(bottleneck r, alpha for `add_lora`, whose scale is alpha / r) of a LoRA on layers of input
    width `width`. "rank": r = rank, scale alpha / rank. "reduction" (the papers' CLI): rank is
    a reduction factor R, r = width / R and scale = alpha / R; `key` names the setting at fault."""
    if convention == "rank":
        return rank, alpha
    if convention != "reduction":
        raise SettingError("lora_convention", f"must be one of {', '.join(LORA_CONVENTIONS)}, got {convention!r}")
    if width % rank:
        raise SettingError(key, f"is a reduction factor (lora_convention reduction) and must divide the width "
                                f"{width} of the layers it adapts, got {rank}")
    r = width // rank
    return r, alpha / rank * r


def check_lora_fit(module: nn.Module, targets: tuple[str, ...], rank: int, value: int, key: str, what: str) -> None:
    """Before `add_lora` wraps `module`'s linear layers named `targets` with bottleneck `rank`:
    every name must be one of its linear layers, and the bottleneck no wider than any of them (a
    wider one adds memory and nothing else: lora_rank 1e9 asked for 512 GB). `value` is the
    setting `key` as given (a reduction factor or the rank); `what` names the module."""
    linear = [(name.rsplit(".", 1)[-1], m) for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    missing = [t for t in targets if t not in {n for n, _ in linear}]
    if missing:
        raise SettingError("lora_targets", f"names no linear layer of the {what}: {', '.join(missing)} (its linear "
                                           f"layers: {', '.join(sorted({n for n, _ in linear}))})")
    name, layer = min(((n, m) for n, m in linear if n in targets), key=lambda x: min(x[1].in_features,
                                                                                    x[1].out_features))
    width = min(layer.in_features, layer.out_features)
    if rank > width:
        made = f"; got {value}" + (f", a bottleneck of {rank}" if rank != value else "")
        raise SettingError(key, f"must give a LoRA bottleneck of at most {width}, the width of the narrowest layer it "
                                f"adapts in the {what} ({name}: {layer.in_features} -> {layer.out_features}){made}")


def labelled_losses(llm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                    blocks: int = 1) -> list[torch.Tensor]:
    """Mean cross-entropy of each of `blocks` equal row blocks (one per rate pair) of a causal LM.

    The output layer runs only where a label is (transcript + EOS, about a quarter of the
    positions): with a 49k-128k word vocabulary it is a large share of a small LLM's cost,
    and the logits of the audio, video and prompt positions are never used.
    """
    hidden = llm.get_decoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # (R, L, D)
    target = labels[:, 1:]  # (R, L-1): position t predicts token t+1
    keep = target != IGNORE  # (R, L-1)
    logits = llm.get_output_embeddings()(hidden[:, :-1][keep]).float()  # (N, V), N labelled positions
    token_loss = F.cross_entropy(logits, target[keep], reduction="none")  # (N,)
    block = keep.nonzero()[:, 0] // (labels.shape[0] // blocks)  # (N,) block of each labelled position
    sums = token_loss.new_zeros(blocks).index_add(0, block, token_loss)  # (blocks,)
    counts = keep.reshape(blocks, -1).sum(1)  # (blocks,)
    return list(sums / counts)


def _pad_cat(parts: Sequence[torch.Tensor], value: float | int | bool) -> torch.Tensor:
    """[(B_i, T_i, ...)] -> (sum B_i, max T_i, ...): right-padded with `value` along dim 1."""
    if len(parts) == 1:
        return parts[0]
    t = max(x.shape[1] for x in parts)
    return torch.cat([F.pad(x, (0, 0) * (x.dim() - 2) + (0, t - x.shape[1]), value=value) for x in parts])


def _stack_batches(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(x (B, T_i, D), pad (B, T_i))] -> one batch (n*B, max T_i, D) with its padding mask."""
    return _pad_cat([x for x, _ in parts], 0.0), _pad_cat([p for _, p in parts], True)
