"""The small Llama LM: exact tokenizer round-trip, learning, HF loading/generation, determinism."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from avsr.backbones.small_lm import (REPORT, SmallLMConfig, SmallLMError, perplexity, pretrain_lm_from_labels,
                                  train_small_lm)
from avsr.synth.text import GRID_GRAMMAR, grid_sentence


def tiny_cfg(**overrides) -> SmallLMConfig:
    settings = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=172, max_position_embeddings=64, steps=150, batch_size=16,
                    lr=5e-3, warmup_steps=15, log_every=0, seed=3)
    settings.update(overrides)
    return SmallLMConfig(**settings)


def grid_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [grid_sentence(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, report, held-out sentences) of one tiny training on 200 GRID sentences."""
    out = tmp_path_factory.mktemp("lm") / "small_lm"
    val = grid_texts(100, seed=12345)
    path = train_small_lm(grid_texts(200, seed=0), out, tiny_cfg(), val_texts=val, log=None)
    return path, json.loads((path / REPORT).read_text("utf-8")), val


@pytest.fixture(scope="module")
def loaded(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = trained[0]
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    return tok, model.eval()


def test_tokenizer_round_trips_and_adds_bos(loaded):
    tok, _ = loaded
    assert tok.bos_token == "<|begin_of_text|>" and tok.eos_token == "<|end_of_text|>"
    assert tok.pad_token is None
    for text in ["bin blue at f two now", "zebra's 42", "place red with q nine again",
                 "Unseen WORDS, punctuation! and ~bytes~ éà 😀", " two  spaces "]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert tok.eos_token_id not in ids  # EOS is the caller's job
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # Corpus words are single tokens; every ASCII letter/digit/apostrophe is one token of its own.
    assert len(tok("bin blue at f two now", add_special_tokens=False)["input_ids"]) == 6
    for char in "azAZ09'":
        assert len(tok(char, add_special_tokens=False)["input_ids"]) == 1


def test_training_lowers_loss_and_held_out_perplexity(trained, loaded):
    _, report, val = trained
    tok, model = loaded
    assert report["steps"] == 150
    assert report["final_loss"] < 0.5 * report["initial_loss"], report
    # GRID has log(64000)/7 nats per predicted token at best (perplexity ~4.9); uniform = vocab size.
    assert report["val_perplexity"] < 12 and report["val_perplexity"] < len(tok) / 20, report
    assert perplexity(model, tok, val) == pytest.approx(report["val_perplexity"], rel=1e-3)


def test_folder_loads_as_llama_and_generates_grid_grammar(trained, loaded):
    from transformers import LlamaForCausalLM

    path = trained[0]
    tok, model = loaded
    assert isinstance(model, LlamaForCausalLM)
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert model.config.num_key_value_heads == 2 and model.config.num_attention_heads == 4
    enc = tok("bin blue", return_tensors="pt")  # (1, 3): BOS bin blue
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)  # (1, 3 + new)
    words = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).split()
    assert words and words[0] in GRID_GRAMMAR[2], words  # at / by / in / with
    if len(words) > 1:
        assert words[1] in GRID_GRAMMAR[3], words  # then a letter


def test_same_seed_same_weights_and_idempotent(tmp_path):
    texts = grid_texts(60, seed=5)
    cfg = tiny_cfg(steps=15, warmup_steps=3)
    a = train_small_lm(texts, tmp_path / "a", cfg, log=None)
    b = train_small_lm(texts, tmp_path / "b", cfg, log=None)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    c = train_small_lm(texts, tmp_path / "c", tiny_cfg(steps=15, warmup_steps=3, seed=4), log=None)
    wc = load_file(c / "model.safetensors")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    # Same config and text again: the finished folder is returned untouched.
    stamp = (a / REPORT).stat().st_mtime_ns
    assert train_small_lm(texts, a, cfg, log=None) == a and (a / REPORT).stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_pretrain_from_labels_uses_train_split_only(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    for split, n, seed in (("train", 40, 1), ("val", 10, 2), ("test", 10, 3)):
        rows = [f"synth,{split}/s0/{i:05d}.mp4,50,{t}" for i, t in enumerate(grid_texts(n, seed))]
        (labels / f"synth_{split}.csv").write_text("\n".join(rows) + "\n", "utf-8")
    cfg = tiny_cfg(steps=5, warmup_steps=1)
    out = pretrain_lm_from_labels(sorted(labels.glob("*.csv")), tmp_path / "lm", cfg, log=None)
    report = json.loads((out / REPORT).read_text("utf-8"))
    assert report["train_sentences"] == 40 and report["val_sentences"] == 10
    with pytest.raises(SmallLMError, match="no training split"):
        pretrain_lm_from_labels([labels / "synth_val.csv"], tmp_path / "lm2", cfg, log=None)


def test_reading_exercise_layout():
    """[BOS, block(s), prompt, sentence, EOS]: blocks stretch the sentence, only sentence + EOS predicted."""
    import random

    from avsr.backbones.small_lm import reading_exercise

    sentence, prompts, pool = [11, 12, 13], [[90, 91], [92], [93, 94, 95]], [50, 51]
    cfg = SmallLMConfig(reading_noise=(0.0,), reading_max_repeat=3)
    rng = random.Random(0)
    seen_tasks = set()
    for _ in range(40):
        ids, n_context = reading_exercise(sentence, prompts, pool, cfg, rng, bos=1, eos=2)
        assert ids[0] == 1 and ids[n_context:] == sentence + [2]
        prompt = next(p for p in prompts if ids[n_context - len(p):n_context] == p)
        seen_tasks.add(tuple(prompt))
        blocks = ids[1:n_context - len(prompt)]
        words = [t for t in blocks if t not in pool]  # noise 0: only edge fillers come from the pool
        runs = [t for i, t in enumerate(words) if i == 0 or words[i - 1] != t]
        assert runs == sentence * (2 if prompt == prompts[2] else 1)  # AVSR: two blocks
        assert all(1 <= words.count(t) <= 3 * (2 if prompt == prompts[2] else 1) for t in sentence)
    assert len(seen_tasks) == 3


def test_warmup_cosine_schedule_with_and_without_floor():
    from avsr.optimization import warmup_cosine

    f = warmup_cosine(4, 14, floor=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # (step + 1) / warmup
    assert f(4) == 1.0 and f(9) == pytest.approx(0.55) and f(14) == pytest.approx(0.1) and f(30) == f(14)
    g = warmup_cosine(4, 14)
    assert g(9) == pytest.approx(0.5) and g(14) == 0.0
    assert all(f(s) == pytest.approx(0.1 + 0.9 * g(s)) for s in range(4, 20))


def test_adamw_groups_exempt_vectors_and_skip_frozen_parameters():
    from avsr.optimization import adamw, decay_groups

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    decay, no_decay = decay_groups(model.named_parameters(), 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(model[0].weight)]
    assert [id(p) for p in no_decay["params"]] == [id(p) for p in (model[0].bias, model[1].weight, model[1].bias,
                                                                   model[2].bias)]
    (every,) = decay_groups(model.named_parameters(), 0.1, exempt_vectors=False)
    assert len(every["params"]) == 5 and every["weight_decay"] == 0.1
    opt = adamw(model.named_parameters(), 1e-3, 0.1, betas=(0.9, 0.95))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0] and opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_report_marks_the_folder_complete_and_ours(tmp_path):
    from avsr.backbones.small_lm import FOLDER, is_complete

    out = tmp_path / "lm"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"")
    assert not is_complete(out) and not FOLDER.is_ours(out)
    with pytest.raises(SmallLMError, match="not a finished small-LM folder"):
        FOLDER.check_replaceable(out)
    (out / REPORT).write_text(json.dumps({"fingerprint": "old"}), "utf-8")
    assert is_complete(out) and is_complete(out, "old") and not is_complete(out, "new")
    FOLDER.check_replaceable(out)  # an older training of ours: may be replaced
    (out / REPORT).write_text("{", "utf-8")
    assert not is_complete(out) and not FOLDER.is_ours(out)
