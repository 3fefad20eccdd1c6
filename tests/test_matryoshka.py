"""Matryoshka (Llama-MTSK) and Omni-AVSR: multi-rate tokens, the averaged loss, LoRA banks,
elastic decoding from one checkpoint."""

from __future__ import annotations

import pytest
import torch

from avsr.models.tasks import adapter_names, scale_name
from avsr.models.compression import compressed_lengths
from avsr.models.loading import load_checkpoint, save_checkpoint
from avsr.models.lora import LoRALinear
from conftest import make_batch, tiny_model

RATES = dict(audio_rates=(4, 16), video_rates=(2, 5))


def test_every_rate_gives_the_expected_token_counts():
    model = tiny_model(audio_rates=(4, 8, 12, 16, 20), video_rates=(1, 2, 3, 4, 5))
    batch = make_batch([50, 23, 7], seed=1)  # video frames; audio encoder frames = 2x (50 Hz)
    pairs = model.pairs("avsr")
    assert len(pairs) == 25
    tokens, _ = model.encode(batch, "avsr", pairs)
    frames = {"audio": 2 * batch["video_lengths"], "video": batch["video_lengths"]}
    for (ra, rv), by_modality in tokens.items():
        for m, rate in (("audio", ra), ("video", rv)):
            x, pad = by_modality[m]
            expected = compressed_lengths(frames[m], rate)
            assert torch.equal((~pad).sum(1), expected), (m, rate)
            assert x.shape[:2] == pad.shape and torch.all(x[pad] == 0)
    assert model.pairs("asr") == [(r, None) for r in (4, 8, 12, 16, 20)]
    assert model.pairs("vsr") == [(None, r) for r in (1, 2, 3, 4, 5)]


@pytest.mark.parametrize("scheme", ["ms", "ss", "mss"])
@pytest.mark.parametrize("batched", [True, False])
def test_matryoshka_loss_is_the_mean_of_the_per_pair_losses(scheme, batched):
    model = tiny_model(lora_scheme=scheme, matryoshka_batched=batched, **RATES)
    _perturb_lora(model)
    batch = make_batch([20, 14, 9], seed=3)
    loss, aux = model(batch, "avsr")
    one_by_one = [model(batch, "avsr", pair)[0] for pair in model.pairs("avsr")]
    assert len(one_by_one) == 4
    assert abs(loss.item() - torch.stack(one_by_one).mean().item()) < 1e-5
    for pair, value in zip(model.pairs("avsr"), one_by_one):
        assert abs(aux[f"loss/{scale_name('avsr', pair)}"].item() - value.item()) < 1e-5


def test_pair_weights_scale_each_pair():
    model = tiny_model(pair_weights=(1.0, 1.0, 1.5, 2.0), **RATES)
    batch = make_batch([20, 14], seed=4)
    loss, _ = model(batch, "avsr")
    per_pair = [model(batch, "avsr", p)[0] for p in model.pairs("avsr")]
    expected = (per_pair[0] + per_pair[1] + 1.5 * per_pair[2] + 2.0 * per_pair[3]) / 4  # (1/(G L)) sum c_ij CE_ij
    assert abs(loss.item() - expected.item()) < 1e-5


def _perturb_lora(model):
    """Non-zero B matrices, so every adapter changes the output (they start at zero)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in model.llm.modules():
            if isinstance(module, LoRALinear):
                for b in module.lora_B.values():
                    b.copy_(0.05 * torch.randn(b.shape, generator=g))


def _adapters_with_gradient(model) -> set[str]:
    names = set()
    for module in model.llm.modules():
        if isinstance(module, LoRALinear):
            for name, b in module.lora_B.items():
                if b.grad is not None and float(b.grad.abs().sum()) > 0:
                    names.add(name)
    return names


@pytest.mark.parametrize("scheme,task,pair,expected", [
    ("ms", "avsr", (16, 2), {"shared"}),
    ("ss", "avsr", (16, 2), {"a16v2"}),
    ("mss", "avsr", (4, 5), {"shared", "a4v5"}),
    ("t", "vsr", (None, 5), {"vsr"}),
    ("st", "asr", (16, None), {"shared", "asr"}),
])
def test_lora_schemes_train_exactly_the_selected_adapters(scheme, task, pair, expected):
    model = tiny_model(lora_scheme=scheme, **RATES)
    banks = set(next(m for m in model.llm.modules() if isinstance(m, LoRALinear)).lora_A)
    if scheme in ("ss", "mss"):  # one adapter per scale of every task
        assert {"a4v2", "a16v5", "a4", "a16", "v2", "v5"} <= banks
    if scheme in ("t", "st"):
        assert {"asr", "vsr", "avsr"} <= banks
    assert set(adapter_names(scheme, task, pair)) == expected
    model.zero_grad()
    model(make_batch([20, 14], seed=6), task, pair)[0].backward()
    assert _adapters_with_gradient(model) == expected  # no other scale's or task's adapter ran


@pytest.mark.parametrize("scheme", ["ss", "mss"])
def test_batched_step_gives_each_scale_the_gradient_of_its_own_rows(scheme):
    """One LLM batch for all pairs == one pass per pair, for the loss and for every gradient."""
    grads = {}
    for batched in (True, False):
        model = tiny_model(lora_scheme=scheme, matryoshka_batched=batched, **RATES)
        _perturb_lora(model)
        model.zero_grad()
        model(make_batch([20, 14, 9], seed=7), "avsr")[0].backward()
        grads[batched] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys()
    for name, g in grads[True].items():
        assert torch.allclose(g, grads[False][name], atol=1e-6, rtol=1e-4), name


def test_projector_per_rate_or_shared():
    per_rate = tiny_model(**RATES)
    assert set(per_rate.projector.mlps) == {"audio@4", "audio@16", "video@2", "video@5"}
    model = tiny_model(rate_projectors=False, **RATES)
    assert set(model.projector.mlps) == {"audio", "video"}
    batch = make_batch([20, 14], seed=8)
    loss, _ = model(batch, "avsr")
    model.zero_grad()
    per_rate.zero_grad()
    per_rate(batch, "avsr", (16, 2))[0].backward()  # only that pair's projectors learn from it
    trained = {n.split(".")[2] for n, p in per_rate.named_parameters()
               if n.startswith("projector.") and p.grad is not None and float(p.grad.abs().sum()) > 0}
    assert trained == {"audio@16", "video@2"}
    # One projector per modality serves every rate: the rates go through it stacked in one call,
    # and each rate pair still gets its own tokens (its loss, as when encoded alone) ...
    per_pair = [model(batch, "avsr", pair)[0] for pair in model.pairs("avsr")]
    assert loss.item() == pytest.approx(torch.stack(per_pair).mean().item(), abs=1e-5)
    assert len({round(v.item(), 4) for v in per_pair}) == 4  # the rates really give different tokens
    for pair, pair_loss in zip(model.pairs("avsr"), per_pair):  # ... and trains the same two MLPs
        model.zero_grad()
        pair_loss.backward()
        trained = {n.split(".")[2] for n, p in model.named_parameters()
                   if n.startswith("projector.") and p.grad is not None and float(p.grad.abs().sum()) > 0}
        assert trained == {"audio", "video"}, pair


def test_one_checkpoint_decodes_at_every_trained_pair(tmp_path):
    model = tiny_model(lora_scheme="mss", **RATES)
    _perturb_lora(model)
    batch = make_batch([20, 14], seed=9)
    folder = save_checkpoint(model, tmp_path / "ckpt")
    fresh = tiny_model(lora_scheme="mss", **RATES)  # same frozen backbones, untrained adapters
    before = {p: fresh.generate(batch, "avsr", num_beams=2, max_new_tokens=6, pair=p) for p in fresh.pairs("avsr")}
    load_checkpoint(folder, fresh)
    hyps = {}
    for pair in model.pairs("avsr"):
        hyps[pair] = fresh.generate(batch, "avsr", num_beams=2, max_new_tokens=6, pair=pair)
        assert hyps[pair] == model.generate(batch, "avsr", num_beams=2, max_new_tokens=6, pair=pair)
    assert before != hyps and len(set(map(tuple, hyps.values()))) > 1  # the scales really differ
    assert fresh.generate(batch, "asr", num_beams=2, max_new_tokens=6, pair=(16, 5)) == \
        fresh.generate(batch, "asr", num_beams=2, max_new_tokens=6, pair=(16, None))  # ASR ignores the video rate
    with pytest.raises(ValueError, match="not trained at rates a8v2"):
        fresh.generate(batch, "avsr", pair=(8, 2))


def test_smop_at_every_rate():
    """The elastic sparse model: a sparse mixture of projectors per rate."""
    model = tiny_model(projector="smop", smop_topology="dedr", smop_experts=3, **RATES)
    assert set(model.projector.pools) == {"audio@4", "audio@16", "video@2", "video@5"}
    batch = make_batch([20, 14], seed=10)
    loss, aux = model(batch, "avsr")
    assert {k for k in aux if k.endswith("/tokens")} == {f"usage/{s}/tokens" for s in model.projector.pools}
    # Each rate's pool routes exactly that rate's real tokens (audio encoder: 2 frames per video
    # frame), each token to top-k of its experts ...
    k, frames = model.cfg.smop_top_k, {"audio": 2 * batch["video_lengths"], "video": batch["video_lengths"]}
    for pool in model.projector.pools:
        m, rate = pool.split("@")
        tokens = int(compressed_lengths(frames[m], int(rate)).sum())
        assert aux[f"usage/{pool}/tokens"].item() == tokens, pool
        assert aux[f"usage/{pool}/routed"].sum().item() == k * tokens, pool
    # ... the load-balancing term is the routers' mean, at least k (its minimum, uniform routing),
    # times its coefficient; and the loss is the Matryoshka mean over the four rate pairs.
    assert aux["smop/load_balancing"].item() >= k - 1e-4
    assert aux["load_balancing_loss"].item() == pytest.approx(
        model.cfg.smop_load_balancing * aux["smop/load_balancing"].item(), rel=1e-6)
    per_pair = [model(batch, "avsr", pair)[0] for pair in model.pairs("avsr")]
    assert loss.item() == pytest.approx(torch.stack(per_pair).mean().item(), abs=1e-5)


def test_omni_objective_weights_the_tasks_at_one_drawn_pair(tiny_corpus):
    from avsr.training.config import load_config
    from avsr.training.train import AVSRLightning

    cfg = load_config(None, ["objective=omni", "model.audio_rates=[4,16]", "model.video_rates=[2,5]",
                             "model.lora_scheme=st"])
    model = tiny_model(lora_scheme="st", **RATES)
    module = AVSRLightning(model, cfg)
    batch = make_batch([20, 14], seed=11)
    total, aux = module.omni_loss(batch)
    drawn = {k for k in aux if k.startswith("loss/")}
    assert drawn == {"loss/asr", "loss/vsr", "loss/avsr"}
    # Recompute at each candidate pair: exactly one pair reproduces all three task losses.
    matches = []
    for pair in model.pairs("avsr"):
        per_task = {t: model(batch, t, model.check_pair(t, pair))[0] for t in ("asr", "vsr", "avsr")}
        if all(abs(per_task[t].item() - aux[f"loss/{t}"].item()) < 1e-5 for t in per_task):
            matches.append(pair)
            expected = (per_task["asr"] + 1.5 * per_task["vsr"] + per_task["avsr"]) / 3
            assert abs(total.item() - expected.item()) < 1e-5
    assert len(matches) == 1, matches


@pytest.mark.parametrize("batched", [True, False])
def test_each_encoder_runs_once_per_matryoshka_step(batched):
    model = tiny_model(matryoshka_batched=batched, **RATES)
    calls = {"audio": 0, "video": 0}
    for m, encoder in model.encoders.items():
        encoder.register_forward_hook(lambda *_, m=m: calls.__setitem__(m, calls[m] + 1))
    llm_calls = []
    model.llm.get_decoder().register_forward_hook(lambda *_: llm_calls.append(1))  # the transformer stack
    model(make_batch([20, 14], seed=12), "avsr")
    assert calls == {"audio": 1, "video": 1}
    assert len(llm_calls) == (1 if batched else 4)  # one LLM pass for the 4 pairs, or one each


def test_budget_picks_the_pair_with_the_most_tokens_that_fits():
    from avsr.evaluation.elastic import choose_pair
    from avsr.models.tasks import tokens_per_second

    model = tiny_model(**RATES)
    assert tokens_per_second("avsr", (4, 2)) == 25.0 and tokens_per_second("asr", (16, None)) == 3.125
    assert choose_pair(model, "avsr", max_tokens_per_second=100)[0] == (4, 2)
    pair, reason = choose_pair(model, "avsr", max_tokens_per_second=16)
    assert pair == (16, 2) and "a16v2" in reason  # 15.6 tokens/s; (4, 5) needs 17.5
    assert choose_pair(model, "vsr", max_tokens_per_second=6)[0] == (None, 5)
    rtf = {(4, 2): 0.4, (4, 5): 0.1, (16, 2): 0.3, (16, 5): 0.05}
    assert choose_pair(model, "avsr", max_rtf=0.2, rtf_by_pair=rtf)[0] == (4, 5)
    with pytest.raises(ValueError, match="cheapest, a16v5, needs 8.125 tokens/s"):
        choose_pair(model, "avsr", max_tokens_per_second=5)
