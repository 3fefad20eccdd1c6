"""Train a small Llama-architecture causal LM (and its tokenizer) on corpus transcripts.

Why: the LLM-based AVSR model needs a frozen decoder-only LM that it adapts with LoRA, and no
model hub is reachable here. A few-million-parameter `LlamaForCausalLM` trained from scratch on
the corpus text goes through exactly the Hugging Face code path of Llama 3.2 (RMSNorm, RoPE,
SwiGLU, grouped-query attention, byte-level BPE with `<|begin_of_text|>` / `<|end_of_text|>`),
so swapping in a real Llama later changes a folder name, not the code.

The output folder is a standard Hugging Face folder (safetensors weights, `tokenizer.json`,
`config.json`) loadable offline with `AutoTokenizer` / `AutoModelForCausalLM`, plus
`small_lm_report.json` (written last; its presence marks a complete folder).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from avsr.backbones.folder import BackboneFolder
from avsr.errors import AvsrError
from avsr.models.tasks import PROMPTS, TASKS
from avsr.optimization import train_steps
from avsr.optimization import warmup_cosine_adamw

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
REPORT = "small_lm_report.json"  # written last: its presence means the folder is complete
FORMAT_VERSION = 2  # bump when the output changes, so old folders are retrained

# Characters every tokenizer knows as single tokens even if the corpus never uses them, so that
# unseen words ("zebra's 42") split into known pieces instead of raw bytes. (Byte-level BPE can
# encode any byte anyway; this only makes the common ones cheap and stable.)
_BASE_ALPHABET = string.ascii_letters + string.digits + "' "


def _print(message: str) -> None:
    print(message, flush=True)  # progress must show up even when stdout is a pipe


class SmallLMError(AvsrError):
    """No usable training text, or an output folder that is not ours to replace."""


FOLDER = BackboneFolder(REPORT, "a finished small-LM folder", error=SmallLMError)


@dataclass
class SmallLMConfig:
    # tokenizer
    vocab_size: int = 512  # byte-level BPE: 256 byte tokens + 2 specials + merges
    # model (Llama 3 layout, tiny)
    # D 128 (0.8M parameters): reads as well as D 256 (3M) after the same 800 steps (teacher-forced
    # reading accuracy 99.9 / 90.0 / 70.4% vs 100 / 89.9 / 69.6% at 0 / 30 / 60% noise) in a third
    # of the time, and makes every AVSR step cheaper (docs/quickstart.md).
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # grouped-query attention, as in Llama 3
    intermediate_size: int = 344  # ~8/3 x hidden, SwiGLU
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True  # as in Llama 3.2 1B/3B
    # training
    # Reading must be learnt: at D 256, after 400 steps (60% reading exercises) the LM read clean
    # blocks with 73% token accuracy and the AVSR model trained on it reached 53% ASR WER; after
    # 800 steps (90%) 99.6%, and 6% ASR WER. At D 128, 500 steps read as well as 800 (99.4 / 89.0
    # / 70.7% vs 99.9 / 90.0 / 70.4% at 0 / 30 / 60% noise; docs/quickstart.md).
    steps: int = 500
    # Fraction of training sequences that are "reading exercises" (see `reading_exercise`):
    # BOS, one or two blocks of the sentence's tokens stretched (each repeated 1-4 times) and
    # corrupted (random tokens), the task prompt, then the clean sentence. A tiny LM trained
    # on short sentences alone attends only to its last few tokens, so nothing placed before
    # the prompt (the audio/video tokens of the AVSR model) reaches its predictions and no
    # gradient flows there (docs/quickstart.md). A Llama-scale LLM brings the ability to read
    # a long, noisy context from pretraining; these exercises give it to a tiny model. The
    # blocks mimic what the projectors produce: several tokens per word, some uncertain, and
    # for AVSR two views with independent noise, so the LM also learns to combine them.
    reading_fraction: float = 0.9
    reading_max_repeat: int = 4  # each word token appears 1..this many times in a block
    reading_noise: tuple[float, ...] = (0.0, 0.1, 0.3, 0.6)  # per-block corruption, drawn uniformly
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    warmup_steps: int = 40
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_length: int = 128  # tokens per sentence incl. BOS/EOS; longer ones are truncated
    seed: int = 0
    # Intra-op threads while training: a fixed count keeps float reductions (hence the weights)
    # reproducible. 2 suits the quickstart's 2 free cores; use 1 when the cores are shared with
    # other jobs (OpenMP threads then slow down several-fold).
    num_threads: int = 2
    log_every: int = 50  # print the running loss every N steps (0 = silent)


# ----------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """Byte-level BPE like Llama 3: any string encodes and decodes back exactly.

    Returns a `PreTrainedTokenizerFast` whose post-processor prepends BOS (Llama style); callers
    append EOS themselves. No pad token: the AVSR model adds `<pad>` when it needs one.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    if vocab_size < len(byte_alphabet) + 2:
        raise SmallLMError(f"vocab_size {vocab_size} is too small: byte-level BPE needs at least "
                           f"{len(byte_alphabet) + 2} (256 bytes + BOS + EOS)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[BOS, EOS],
                                  initial_alphabet=byte_alphabet, show_progress=False)
    # The base alphabet joins the training text once so its letters/digits are always present.
    tok.train_from_iterator(list(texts) + [_BASE_ALPHABET], trainer=trainer)
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1",
                                      special_tokens=[(BOS, bos_id)]),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   clean_up_tokenization_spaces=False, model_max_length=None)


def encode_sentences(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Each text -> [BOS, ..., EOS] token ids (BOS from the post-processor), at most max_length."""
    out = []
    for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]:
        ids = list(ids)[: max_length - 1] + [tokenizer.eos_token_id]
        out.append(ids)
    return out


def _pad_batch(examples: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, n_context) examples -> right-padded (input_ids, attention_mask, labels), each (B, L).

    Labels are the input ids with -100 on padding and on the first n_context tokens (context
    that is given, not predicted; HF shifts labels inside the loss).
    """
    length = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(examples), length), dtype=torch.long)  # (B, L)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)  # (B, L)
    for i, (seq, n_context) in enumerate(examples):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
        labels[i, n_context: len(seq)] = ids[i, n_context: len(seq)]
    return ids, mask, labels


def reading_exercise(sentence: Sequence[int], prompts: Sequence[Sequence[int]], noise_pool: Sequence[int],
                     cfg: SmallLMConfig, rng: random.Random, bos: int, eos: int) -> tuple[list[int], int]:
    """One reading exercise: ([BOS, block(s), prompt, sentence, EOS], n_context).

    `prompts` are the token ids of the ASR, VSR and AVSR prompts (in that order); the AVSR one
    gets two blocks. A block: 0-3 noise tokens, each sentence token repeated 1..max_repeat
    times with every copy replaced by a random `noise_pool` token with the block's noise
    probability, 0-3 noise tokens. Only the sentence and EOS are predicted.
    """
    task = rng.randrange(len(prompts))
    context = [bos]
    for _ in range(2 if task == 2 else 1):
        noise = rng.choice(cfg.reading_noise)
        block = [rng.choice(noise_pool) for _ in range(rng.randint(0, 3))]
        for token in sentence:
            block += [rng.choice(noise_pool) if rng.random() < noise else token
                      for _ in range(rng.randint(1, cfg.reading_max_repeat))]
        block += [rng.choice(noise_pool) for _ in range(rng.randint(0, 3))]
        context += block
    context += list(prompts[task])
    return context + list(sentence) + [eos], len(context)


# ----------------------------------------------------------------------------------------------
# Model


def llm_config(cfg: SmallLMConfig, vocab_size: int | None = None, bos_token_id: int | None = None,
               eos_token_id: int | None = None):
    """The `LlamaConfig` of the LM cfg sizes (vocabulary: the tokenizer's length, at most cfg.vocab_size)."""
    from transformers import LlamaConfig

    if cfg.hidden_size % cfg.num_attention_heads or cfg.num_attention_heads % cfg.num_key_value_heads:
        raise SmallLMError(f"hidden_size {cfg.hidden_size} / heads {cfg.num_attention_heads} / "
                           f"kv_heads {cfg.num_key_value_heads} do not divide evenly")
    return LlamaConfig(
        vocab_size=vocab_size or cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=None,
        hidden_act="silu", attention_bias=False, mlp_bias=False)


def build_model(cfg: SmallLMConfig, tokenizer):
    """A freshly initialised `LlamaForCausalLM` sized by cfg (float32, sdpa attention)."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llm_config(cfg, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id))
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id  # generate() needs one; EOS ends anyway
    return model


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], max_length: int = 128, batch_size: int = 64) -> float:
    """Per-token perplexity of texts (each BOS + text + EOS; BOS is context, not predicted)."""
    model.eval()
    seqs = encode_sentences(tokenizer, texts, max_length)
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(seqs), batch_size):
        ids, mask, labels = _pad_batch([(s, 1) for s in seqs[start:start + batch_size]], tokenizer.eos_token_id)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, L, V)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, L-1, V): predicts positions 1..L-1
        target = labels[:, 1:]  # (B, L-1)
        valid = target != -100
        nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, L-1)
        total_nll += float(nll[valid].sum())
        total_tokens += int(valid.sum())
    return math.exp(total_nll / max(1, total_tokens))


def _train(model, sentences: list[list[int]], make_example: Callable[[list[int], random.Random], tuple[list[int], int]],
           cfg: SmallLMConfig, pad_id: int, log: Callable[[str], None] | None) -> dict:
    """AdamW + warm-up/cosine, clip 1.0, shuffled epochs; examples drawn fresh every batch.

    `sentences` are [BOS, ..., EOS] token ids; `make_example(sentence, rng)` turns one into a
    training example (plain or reading exercise). Both generators are seeded from cfg.seed.
    """
    # Matrices decay; norms do not. Warm-up, then cosine down to min_lr_ratio at the last step.
    opt, sched = warmup_cosine_adamw(model.named_parameters(), cfg.lr, cfg.weight_decay, cfg.warmup_steps,
                                     cfg.steps, floor=cfg.min_lr_ratio, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    order: list[int] = []

    def loss_at(step: int) -> torch.Tensor:
        nonlocal order
        while len(order) < cfg.batch_size:  # refill with a fresh permutation (epochs wrap around)
            order += torch.randperm(len(sentences), generator=gen).tolist()
        batch, order = order[:cfg.batch_size], order[cfg.batch_size:]
        ids, mask, labels = _pad_batch([make_example(sentences[i], rng) for i in batch], pad_id)  # (B, L)
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss

    def log_progress(step: int, losses: list[float]) -> None:
        if log and cfg.log_every and ((step + 1) % cfg.log_every == 0 or step == 0):
            recent = losses[-cfg.log_every:]
            log(f"small LM step {step + 1}/{cfg.steps}  loss {sum(recent) / len(recent):.4f}  "
                f"lr {sched.get_last_lr()[0]:.2e}")

    losses = train_steps(model, opt, sched, cfg.steps, loss_at, cfg.grad_clip, log_progress)
    model.eval()
    tail = losses[-min(len(losses), 20):]
    return dict(initial_loss=losses[0], final_loss=sum(tail) / len(tail), losses=losses)


# ----------------------------------------------------------------------------------------------
# Public entry points


def _fingerprint(cfg: SmallLMConfig, texts: Sequence[str], val_texts: Sequence[str] | None) -> str:
    """What decides the result: config (minus logging), training and validation text."""
    h = hashlib.sha256()
    settings = {k: v for k, v in asdict(cfg).items() if k != "log_every"}
    h.update(json.dumps(dict(version=FORMAT_VERSION, cfg=settings), sort_keys=True).encode())
    for group in (texts, val_texts or []):
        h.update(b"\x00GROUP")
        for t in group:
            h.update(t.encode("utf-8") + b"\n")
    return h.hexdigest()


def is_complete(out_dir: str | os.PathLike, fingerprint: str | None = None) -> bool:
    """True if out_dir holds a finished training (with this fingerprint, when given)."""
    return FOLDER.is_complete(out_dir, None if fingerprint is None else {"fingerprint": fingerprint})


def train_small_lm(texts: Sequence[str], out_dir: str | os.PathLike, cfg: SmallLMConfig | None = None,
                   val_texts: Sequence[str] | None = None,
                   log: Callable[[str], None] | None = _print) -> Path:
    """Train tokenizer + LM on texts and write the HF folder out_dir (returned at once if done).

    Writes into a temporary sibling folder renamed into place last, so an interrupted run never
    leaves a folder that looks complete. Same config + same texts -> nothing retrained.
    `log` receives progress lines (None: silent). `val_texts` (held out) give the perplexity.
    """
    cfg = cfg or SmallLMConfig()
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
        raise SmallLMError("no training text for the small LM")
    val_texts = [t.strip() for t in (val_texts or []) if t and t.strip()] or None
    out_dir = Path(out_dir)
    fingerprint = _fingerprint(cfg, texts, val_texts)
    if is_complete(out_dir, fingerprint):
        return out_dir
    FOLDER.check_replaceable(out_dir)  # an older training of ours may be replaced, nothing else

    started, cpu_started = time.perf_counter(), time.process_time()
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):  # seed locally; the caller's RNG state is untouched
        try:
            torch.manual_seed(cfg.seed)
            torch.set_num_threads(max(1, cfg.num_threads))
            tokenizer = train_tokenizer(texts + list(PROMPTS.values()), cfg.vocab_size)
            model = build_model(cfg, tokenizer)
            seqs = encode_sentences(tokenizer, texts, min(cfg.max_length, cfg.max_position_embeddings))
            bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
            prompts = [tokenizer(PROMPTS[t], add_special_tokens=False)["input_ids"] for t in TASKS]
            noise_pool = sorted({t for s in seqs for t in s[1:-1]})  # the corpus's own tokens

            def make_example(seq: list[int], rng: random.Random) -> tuple[list[int], int]:
                if rng.random() < cfg.reading_fraction:
                    example = reading_exercise(seq[1:-1], prompts, noise_pool, cfg, rng, bos, eos)
                    if len(example[0]) <= cfg.max_position_embeddings:
                        return example
                return seq, 1  # a plain sentence: every token after BOS is predicted

            n_params = sum(p.numel() for p in model.parameters())
            if log:
                log(f"small LM: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, "
                    f"{len(texts)} sentences, {sum(map(len, seqs))} tokens")
            result = _train(model, seqs, make_example, cfg, eos, log)
        finally:
            torch.set_num_threads(threads)
    train_seconds = time.perf_counter() - started
    train_cpu_seconds = time.process_time() - cpu_started  # wall time misleads on a shared machine
    report = dict(format_version=FORMAT_VERSION, fingerprint=fingerprint, config=asdict(cfg),
                  parameters=n_params, vocab_size=len(tokenizer), train_sentences=len(texts),
                  train_tokens=sum(map(len, seqs)), steps=cfg.steps,
                  initial_loss=round(result["initial_loss"], 4), final_loss=round(result["final_loss"], 4),
                  train_seconds=round(train_seconds, 2),
                  train_cpu_seconds=round(train_cpu_seconds, 2), torch_threads=cfg.num_threads)
    if val_texts:
        ppl = perplexity(model, tokenizer, val_texts, cfg.max_length)
        report.update(val_sentences=len(val_texts), val_perplexity=round(ppl, 4))
        if log:
            log(f"small LM: held-out perplexity {ppl:.3f} (uniform would be {len(tokenizer)})")

    with FOLDER.writing(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        report["seconds"] = round(time.perf_counter() - started, 2)
        FOLDER.write_marker(tmp, report)  # last: completes it
    if log:
        log(f"small LM: wrote {out_dir} in {report['seconds']:.1f} s (final loss {report['final_loss']:.4f})")
    return out_dir


_HELD_OUT_SPLITS = ("val", "test")


def pretrain_lm_from_labels(label_csvs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                            cfg: SmallLMConfig | None = None,
                            log: Callable[[str], None] | None = _print) -> Path:
    """Train the small LM on the transcripts of label CSVs (`<corpus>_<split>.csv`).

    Only training text teaches the LM: CSVs named `*_val.csv` / `*_test.csv` are never trained
    on (the LM would otherwise memorise the sentences it is later scored on); `*_val.csv` ones
    give the held-out perplexity in the report. Every other CSV counts as training text.
    """
    from avsr.data.dataset import read_manifest

    train_texts: list[str] = []
    val_texts: list[str] = []
    for path in map(Path, label_csvs):
        split = path.stem.rsplit("_", 1)[-1] if "_" in path.stem else ""
        rows = read_manifest(path)
        if split == "val":
            val_texts += [r.text for r in rows]
        elif split not in _HELD_OUT_SPLITS:
            train_texts += [r.text for r in rows]
    if not train_texts:
        raise SmallLMError(f"no training split among {[str(p) for p in label_csvs]}: pass a "
                           f"<corpus>_train.csv (val/test label files are held out, never trained on)")
    return train_small_lm(train_texts, out_dir, cfg, val_texts=val_texts or None, log=log)
