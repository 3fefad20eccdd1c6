"""The LLM-based AVSR model (Llama-AVSR): frozen encoders -> compression -> projectors ->
[BOS, <audio> A </audio>, <video> V </video>, prompt, transcript, EOS] -> frozen LLM + LoRA.

One class serves ASR, VSR and AVSR (the task is chosen per batch) and every size, from the
tiny CPU backbones of the tests to Whisper-medium + AV-HuBERT Large + Llama 3.1-8B. Padding
is masked at every stage, so an utterance's hypothesis does not depend on its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from avsr.models.compression import compress
from avsr.models.lora import add_lora
from avsr.models.masks import lengths_to_padding_mask
from avsr.models.projector import build_projector

TASKS = ("asr", "vsr", "avsr")
MODALITIES = {"asr": ("audio",), "vsr": ("video",), "avsr": ("audio", "video")}
PROMPTS = {  # as in the Llama-AVSR papers
    "asr": "Transcribe speech to text.",
    "vsr": "Transcribe video to text.",
    "avsr": "Transcribe speech and video to text.",
}
SPECIAL_TOKENS = ("<audio>", "</audio>", "<video>", "</video>")
IGNORE = -100


@dataclass
class AVSRConfig:
    """Everything needed to rebuild the model (saved with every checkpoint)."""

    llm: str = ""  # Hugging Face causal LM: local folder or hub id
    audio_encoder: str | None = None  # Whisper folder or hub id (None: no audio tasks)
    video_encoder: str | None = None  # folder written by `avsr pretrain-encoder --modality video`
    audio_rate: int = 4  # audio tokens at 50/K Hz
    video_rate: int = 2  # video tokens at 25/K Hz
    compression: str = "avg-pooling"  # or "stack"
    projector: str = "mlp"  # "mlp" (Llama-AVSR) or "smop" (sparse mixture of projectors, Llama-SMoP)
    projector_hidden: int = 2048
    projector_layer_norm: bool = False
    smop_topology: str = "dedr"  # "jejr", "jedr" or "dedr" (models/mixture.py)
    smop_experts: int = 4  # experts per pool
    smop_top_k: int = 2
    smop_load_balancing: float = 0.01  # coefficient of the load-balancing loss
    smop_z_loss: float = 0.001  # coefficient of the router z-loss
    lora_rank: int = 64
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    tasks: tuple[str, ...] = TASKS
    pad_audio_to_30s: bool = False
    llm_dtype: str = "float32"

    @classmethod
    def from_dict(cls, data: dict) -> "AVSRConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model settings: {sorted(unknown)}")
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**data)


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
        rates = {"audio": cfg.audio_rate, "video": cfg.video_rate}
        self.rates = rates
        d_in = {m: enc.output_dim * (rates[m] if cfg.compression == "stack" else 1) for m, enc in self.encoders.items()}
        self.projector = build_projector(cfg, d_in, d_llm)
        add_lora(self.llm, tuple(cfg.lora_targets), ("default",), cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
        self.tokenizer = tokenizer
        self._add_special_tokens(d_llm)

    # ------------------------------------------------------------------ tokens
    def _add_special_tokens(self, d_llm: int) -> None:
        """<audio> </audio> <video> </video> (+ <pad> if missing) with their own trainable embeddings.

        The LLM's embedding table stays frozen and unresized: new tokens live in a small
        table of their own, looked up by id (robust to vocabularies padded beyond the
        tokenizer's length).
        """
        tok = self.tokenizer
        new = list(SPECIAL_TOKENS)
        if tok.pad_token is None:
            new.append("<pad>")
        tok.add_tokens(new, special_tokens=True)
        if tok.pad_token is None:
            tok.pad_token = "<pad>"
        self.special = {t: tok.convert_tokens_to_ids(t) for t in new}
        ids = torch.tensor(list(self.special.values()))
        lookup = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
        lookup[ids] = torch.arange(len(ids))
        self.register_buffer("new_token_index", lookup, persistent=False)
        base = self.llm.get_input_embeddings().weight.detach()
        gen = torch.Generator().manual_seed(0)
        init = base.mean(0, keepdim=True) + 0.02 * base.std() * torch.randn(len(ids), d_llm, generator=gen)
        self.new_token_embed = nn.Parameter(init.to(base.dtype))  # (n_new, D)
        self.bos = tok.bos_token_id
        self.eos = tok.eos_token_id
        self.prompt_ids = {t: tok(PROMPTS[t], add_special_tokens=False)["input_ids"] for t in TASKS}

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (...,) -> embeddings (..., D), new special tokens from their own table."""
        table = self.llm.get_input_embeddings()
        lookup = self.new_token_index
        slot = lookup[ids.clamp(max=lookup.numel() - 1)]
        slot = torch.where(ids < lookup.numel(), slot, -1)  # row of the new-token table; -1 = LLM token
        base = table(torch.where(slot >= 0, 0, ids))
        return torch.where((slot >= 0)[..., None], self.new_token_embed[slot.clamp(min=0)].to(base.dtype), base)

    def _ids(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor(ids, dtype=torch.long, device=self.new_token_embed.device)

    # ------------------------------------------------------------------ stages
    def encode(self, batch: dict, task: str) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict]:
        """Per modality of the task: LLM-width tokens (B, T', D) and padding (B, T'); plus aux."""
        compressed = {}
        for m in MODALITIES[task]:
            if f"{m}_features" in batch:  # precomputed by the frozen encoder (training.feature_cache)
                feats = batch[f"{m}_features"]  # (B, T, D_enc)
                pad = lengths_to_padding_mask(batch[f"{m}_feature_lengths"], feats.shape[1])
            else:
                with torch.no_grad():
                    feats, pad = self.encoders[m](batch[m], batch[f"{m}_lengths"])  # (B, T, D_enc)
            compressed[m] = compress(feats, pad, self.rates[m], self.cfg.compression)  # (B, T', ·), (B, T')
        tokens, aux = self.projector(compressed)  # {m: (B, T', D_llm)}
        return {m: (tokens[m], compressed[m][1]) for m in compressed}, aux

    def assemble(self, tokens: dict, task: str, texts: list[str] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Build LLM inputs. With texts (training): right-padded, labels on transcript + EOS.
        Without (decoding): the prefix only, left-padded for generation.
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
            if texts is not None:
                target = self.tokenizer(texts[i], add_special_tokens=False)["input_ids"] + [self.eos]
                parts.append(self.embed(self._ids(target)))
                label += target
            seqs.append(torch.cat(parts))
            labels.append(label)
        length = max(s.shape[0] for s in seqs)
        d = seqs[0].shape[1]
        embeds = seqs[0].new_zeros(b, length, d)
        mask = torch.zeros(b, length, dtype=torch.long, device=embeds.device)
        label_t = torch.full((b, length), IGNORE, dtype=torch.long, device=embeds.device)
        for i, s in enumerate(seqs):
            n = s.shape[0]
            if texts is not None:  # right padding
                embeds[i, :n], mask[i, :n] = s, 1
                label_t[i, :n] = torch.tensor(labels[i], device=embeds.device)
            else:  # left padding
                embeds[i, length - n:], mask[i, length - n:] = s, 1
        return embeds, mask, (label_t if texts is not None else None)

    # ------------------------------------------------------------------ API
    def forward(self, batch: dict, task: str) -> tuple[torch.Tensor, dict]:
        """Mean cross-entropy over transcript and EOS tokens, plus auxiliary terms."""
        tokens, aux = self.encode(batch, task)
        embeds, mask, labels = self.assemble(tokens, task, batch["text"])
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        return out.loss, aux

    @torch.no_grad()
    def generate(self, batch: dict, task: str, num_beams: int = 4, max_new_tokens: int = 32,
                 do_sample: bool = False, return_aux: bool = False, **kwargs) -> list[str] | tuple[list[str], dict]:
        """Deterministic beam search by default (no sampling, whatever the LLM's defaults).

        With return_aux, also the projector's aux dict (e.g. the SMoP expert-usage sums).
        """
        tokens, aux = self.encode(batch, task)
        embeds, mask, _ = self.assemble(tokens, task, None)
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, num_beams=num_beams,
                                max_new_tokens=max_new_tokens, do_sample=do_sample,
                                eos_token_id=self.eos, pad_token_id=self.tokenizer.pad_token_id,
                                bos_token_id=self.bos, **({"temperature": None, "top_p": None, "top_k": None}
                                                          if not do_sample else {}), **kwargs)
        texts = [" ".join(t.lower().split()) for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        return (texts, aux) if return_aux else texts

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
