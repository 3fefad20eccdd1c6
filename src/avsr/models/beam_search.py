"""Batched beam search over a causal LM from prefix embeddings, with one prefill per utterance.

`transformers`' `generate` repeats each left-padded prefix (BOS, audio and video tokens, prompt)
num_beams times before its prefill, so at beam 15 the same prefix is encoded 15 times, and that
prefill is most of the decoding time. Here the prefix runs once per utterance (B rows), its KV
cache is then repeated to B*K rows, and each LLM call advances every beam of every utterance by
one token; an utterance leaves the batch as soon as its result is fixed. About 15x less prefill
work at beam 15.

The search follows transformers' (5.x) beam search step for step, so hypotheses and scores equal
`generate(num_beams=K, do_sample=False, early_stopping=False, num_return_sequences=1)`: the top
2K candidates of the K*V continuations, only the top K ranks may finish (ending on EOS, or at
max_new_tokens), a finished score is the summed log-probability divided by its length (EOS
included) ** length_penalty, beams start at -1e9 except beam 0 so the first step does not pick
K copies, and an utterance stops when its best running beam, normalised by the current length,
can no longer beat its worst finished one. num_beams=1 is greedy search, as `generate` does it.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

NEG = -1.0e9  # transformers' score for "impossible": added, never used as -inf

# Generation settings that change transformers' search (logits processors, stopping rules, other
# outputs) and their neutral values: an LLM whose generation_config sets another value would
# decode differently there, so `unsupported_settings` names it.
NEUTRAL = {"repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0),
           "no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
           "min_length": (None, 0), "min_new_tokens": (None, 0), "forced_bos_token_id": (None,),
           "forced_eos_token_id": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
           "sequence_bias": (None,), "exponential_decay_length_penalty": (None,),
           "renormalize_logits": (None, False), "remove_invalid_values": (None, False), "max_time": (None,),
           "stop_strings": (None,), "guidance_scale": (None, 1.0), "watermarking_config": (None,),
           "early_stopping": (None, False), "num_return_sequences": (None, 1)}


def unsupported_settings(generation_config) -> list[str]:
    """`name=value` of each setting of an LLM's generation_config that `beam_search` does not follow."""
    return [f"{name}={getattr(generation_config, name)!r}" for name, ok in NEUTRAL.items()
            if getattr(generation_config, name, None) not in ok]


class _Decoder:
    """The LLM and its KV cache: the prefill of the prefixes, then one new token per row per call."""

    def __init__(self, llm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor):
        from transformers import DynamicCache

        self.llm = llm
        params = inspect.signature(llm.forward).parameters
        self.cache = DynamicCache(config=llm.config)
        self.cache_key = "cache" if "cache" in params else "past_key_values"
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.mask = mask.long()  # (R, L): grows by one column of ones per step
        positions = self.mask.cumsum(1) - 1  # (R, L) left padding: the first real position is 0
        self.next_position = positions[:, -1:] + 1  # (R, 1) the prefix ends on a real position
        self.first_logits = self._call(inputs_embeds=embeds, position_ids=positions.masked_fill(self.mask == 0, 0))

    def _call(self, **inputs) -> torch.Tensor:
        out = self.llm(**inputs, attention_mask=self.mask, use_cache=True, **{self.cache_key: self.cache}, **self.extra)
        return out.logits[:, -1].float()  # (R, V)

    def select(self, rows: torch.Tensor) -> None:
        """Keep (and repeat, reorder) rows: (R',) indices into the current R rows."""
        self.cache.reorder_cache(rows)
        self.mask, self.next_position = self.mask[rows], self.next_position[rows]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """(R,) the rows' newest tokens -> (R, V) float32 logits of the token after them."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)  # (R, L + t)
        logits = self._call(input_ids=tokens[:, None], position_ids=self.next_position)
        self.next_position = self.next_position + 1
        return logits


class Found(NamedTuple):
    """Each utterance's best hypothesis: `tokens` (B, S) EOS included, right-padded, S the longest;
    `scores` (B,) float32: the summed token log-probabilities over length ** length_penalty (greedy:
    the mean); `token_logp` (B, S) float32: each token's log-probability (0 on padding), from which
    a confidence is read (avsr.transcription.trust); `lengths` (B,): tokens of each, EOS included."""
    tokens: torch.Tensor
    scores: torch.Tensor
    token_logp: torch.Tensor
    lengths: torch.Tensor


@torch.no_grad()
def beam_search(llm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, num_beams: int,
                max_new_tokens: int | torch.Tensor, eos_id: int, pad_id: int | None = None,
                length_penalty: float = 1.0) -> Found:
    """Decode left-padded prefixes `embeds` (B, L, D) with attention `mask` (B, L), padding with
    pad_id (EOS when None). `max_new_tokens`: one limit, or (B,) one per utterance (a longer
    recording may say more; an utterance at its limit ends there, as at a single limit)."""
    caps = torch.as_tensor(max_new_tokens, dtype=torch.long, device=embeds.device).expand(embeds.shape[0])  # (B,)
    if num_beams < 1 or bool((caps < 1).any()):
        raise ValueError(f"num_beams and max_new_tokens must be positive, got {num_beams} and {max_new_tokens}")
    pad = eos_id if pad_id is None else pad_id
    decoder = _Decoder(llm, embeds, mask)
    if num_beams == 1:
        return _greedy(decoder, caps, eos_id, pad)
    return _beams(decoder, num_beams, caps, eos_id, pad, length_penalty)


def _greedy(decoder: _Decoder, caps: torch.Tensor, eos: int, pad: int) -> Found:
    """The most likely token at each step until EOS; score: mean token log-probability, EOS included."""
    logits = decoder.first_logits  # (B, V)
    b, steps = logits.shape[0], int(caps.max())
    tokens = torch.full((b, steps), pad, dtype=torch.long, device=logits.device)  # (B, N)
    token_logp = torch.zeros(b, steps, device=logits.device)  # (B, N)
    lengths = torch.zeros(b, dtype=torch.long, device=logits.device)  # (B,)
    rows = torch.arange(b, device=logits.device)  # (R,) the utterance of each live row
    for t in range(steps):
        best = logits.argmax(-1)  # (R,) on the logits, as generate picks (no rounding ties)
        tokens[rows, t] = best
        token_logp[rows, t] = F.log_softmax(logits, dim=-1).gather(1, best[:, None])[:, 0]
        lengths[rows] = t + 1
        live = (best != eos) & (caps[rows] > t + 1)  # (R,)
        if not live.any():
            break
        rows = rows[live]
        decoder.select(live.nonzero()[:, 0])
        logits = decoder.step(best[live])
    width = int(lengths.max())
    return Found(tokens[:, :width], token_logp.sum(1) / lengths, token_logp[:, :width], lengths)


def _beams(decoder: _Decoder, k: int, caps: torch.Tensor, eos: int, pad: int, length_penalty: float) -> Found:
    """Beam search with K beams per utterance; see the module docstring for the rules."""
    logits = decoder.first_logits  # (B, V)
    b, vocab = logits.shape
    dev, steps = logits.device, int(caps.max())
    out_tokens = torch.full((b, steps), pad, dtype=torch.long, device=dev)  # (B, N)
    out_logp = torch.zeros(b, steps, device=dev)  # (B, N)
    out_scores = torch.zeros(b, device=dev)  # (B,)
    out_lengths = torch.zeros(b, dtype=torch.long, device=dev)  # (B,)

    utts = torch.arange(b, device=dev)  # (b,) the utterances still searching
    decoder.select(utts.repeat_interleave(k))
    logits = logits.repeat_interleave(k, dim=0)  # (b*K, V)
    running = torch.full((b, k, steps), pad, dtype=torch.long, device=dev)  # (b, K, N) live beams' tokens
    running_logp = torch.zeros(b, k, steps, device=dev)  # (b, K, N) their tokens' log-probabilities
    running_scores = torch.zeros(b, k, device=dev)  # (b, K) summed log-probabilities
    running_scores[:, 1:] = NEG  # all beams are equal at first: only beam 0 may extend
    done, done_logp = running.clone(), running_logp.clone()  # (b, K, N) finished hypotheses, best first
    done_scores = torch.full((b, k), NEG, device=dev)  # (b, K) normalised scores
    done_lengths = torch.zeros(b, k, dtype=torch.long, device=dev)  # (b, K)
    done_real = torch.zeros(b, k, dtype=torch.bool, device=dev)  # (b, K) slot holds a hypothesis
    may_finish = torch.arange(2 * k, device=dev) < k  # (2K,) only the top K candidates can finish

    for t in range(steps):
        n = utts.numel()
        last = caps[utts] <= t + 1  # (b,) utterances at their token limit
        total = F.log_softmax(logits, dim=-1).view(n, k, vocab) + running_scores[..., None]  # (b, K, V)
        cand_scores, flat = total.view(n, k * vocab).topk(2 * k)  # (b, 2K) best first
        parent, token = flat // vocab, flat % vocab  # (b, 2K)
        cand = running.gather(1, parent[..., None].expand(-1, -1, steps))  # (b, 2K, N)
        cand[:, :, t] = token
        cand_logp = running_logp.gather(1, parent[..., None].expand(-1, -1, steps))  # (b, 2K, N)
        cand_logp[:, :, t] = cand_scores - running_scores.gather(1, parent)
        ends = (token == eos) | last[:, None]  # (b, 2K)

        # The K best candidates that did not end continue.
        live_scores = cand_scores + ends.float() * NEG  # (b, 2K)
        keep = live_scores.topk(k).indices  # (b, K)
        running = cand.gather(1, keep[..., None].expand(-1, -1, steps))  # (b, K, N)
        running_logp = cand_logp.gather(1, keep[..., None].expand(-1, -1, steps))  # (b, K, N)
        running_scores = live_scores.gather(1, keep)  # (b, K)
        parent = parent.gather(1, keep)  # (b, K)

        # Ended top-K candidates join the finished ones; the K best stay. (Every utterance here can
        # still improve: the others have left.)
        finished = ends & may_finish  # (b, 2K)
        norm = cand_scores / ((t + 1) ** length_penalty) + (~finished) * NEG  # (b, 2K)
        merged_scores = torch.cat([done_scores, norm], dim=1)  # (b, 3K)
        best = merged_scores.topk(k).indices  # (b, K)
        done = torch.cat([done, cand], dim=1).gather(1, best[..., None].expand(-1, -1, steps))  # (b, K, N)
        done_logp = torch.cat([done_logp, cand_logp], dim=1).gather(1, best[..., None].expand(-1, -1, steps))
        done_scores = merged_scores.gather(1, best)  # (b, K)
        done_lengths = torch.cat([done_lengths, torch.full_like(token, t + 1)], dim=1).gather(1, best)  # (b, K)
        done_real = torch.cat([done_real, finished], dim=1).gather(1, best)  # (b, K)

        # Stop an utterance when its best live beam at the current length cannot beat the worst
        # finished hypothesis (all K slots filled), or at its token limit.
        bound = running_scores[:, :1] / ((t + 1) ** length_penalty)  # (b, 1)
        worst = torch.where(done_real, done_scores.min(1, keepdim=True).values, NEG)  # (b, K)
        stop = ~(bound > worst).any(1) | last  # (b,)
        if stop.any():
            out_tokens[utts[stop]] = done[stop, 0]
            out_logp[utts[stop]] = done_logp[stop, 0]
            out_scores[utts[stop]] = done_scores[stop, 0]
            out_lengths[utts[stop]] = done_lengths[stop, 0]
        if stop.all():
            break
        go = ~stop  # (b,)
        rows = (torch.arange(n, device=dev)[:, None] * k + parent)[go].flatten()  # (b'*K,) parent rows
        decoder.select(rows)
        utts, running, running_logp, running_scores = utts[go], running[go], running_logp[go], running_scores[go]
        done, done_logp, done_scores = done[go], done_logp[go], done_scores[go]
        done_lengths, done_real = done_lengths[go], done_real[go]
        logits = decoder.step(running[:, :, t].flatten())  # (b'*K, V)
    width = int(out_lengths.max())
    return Found(out_tokens[:, :width], out_scores, out_logp[:, :width], out_lengths)
