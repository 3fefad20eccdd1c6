"""Sparse mixture of projectors: routing per topology, sparse dispatch == dense reference,
auxiliary losses, padding, and what trains inside the AVSR model."""

from __future__ import annotations

import pytest
import torch

from avsr.models.projectors.mixture import TOPOLOGIES, SparseMixtureProjector, load_balancing_loss, route
from avsr.models.masks import lengths_to_padding_mask
from conftest import make_batch, tiny_model

D_OUT = 12


def make_inputs(widths=(10, 10), lengths=((7, 3, 5), (4, 6, 2)), seed=0):
    """{audio, video}: random tokens with right padding (lengths per utterance)."""
    g = torch.Generator().manual_seed(seed)
    inputs = {}
    for m, d, lens in zip(("audio", "video"), widths, lengths):
        lens = torch.tensor(lens)
        pad = lengths_to_padding_mask(lens, int(lens.max()))  # (B, T)
        x = torch.randn(len(lens), int(lens.max()), d, generator=g).masked_fill(pad[..., None], 0.0)
        inputs[m] = (x, pad)
    return inputs


def make_smop(topology, widths=(10, 10), experts=4, top_k=2, seed=0, layer_norm=True):
    torch.manual_seed(seed)
    return SparseMixtureProjector({"audio": widths[0], "video": widths[1]}, 16, D_OUT, layer_norm,
                                  topology=topology, num_experts=experts, top_k=top_k)


def dense_reference(proj: SparseMixtureProjector, inputs) -> dict[str, torch.Tensor]:
    """Every expert on every position, then the top-k gates applied as a dense (E-wide) mask."""
    out = {}
    for m, (x, pad) in inputs.items():
        x = proj.align[m](x) if m in proj.align else x
        logits = proj.routers[proj.router_of[m]](x)  # (B, T, E)
        _, weights, experts = route(logits.reshape(-1, proj.num_experts), proj.top_k)
        gate = torch.zeros(experts.shape[0], proj.num_experts).scatter(-1, experts, weights)
        gate = gate.reshape(*x.shape[:2], proj.num_experts)  # (B, T, E)
        every = torch.stack([e(x) for e in proj.pools[proj.pool_of[m]].experts], dim=2)  # (B, T, E, D)
        out[m] = (gate[..., None] * every).sum(2).masked_fill(pad[..., None], 0.0)
    return out


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("widths", [(10, 10), (10, 6)])
def test_sparse_dispatch_equals_dense_reference(topology, widths):
    proj = make_smop(topology, widths)
    inputs = make_inputs(widths)
    sparse, aux = proj(inputs)
    dense = dense_reference(proj, inputs)
    for m in inputs:
        assert sparse[m].shape == (3, inputs[m][0].shape[1], D_OUT)
        assert (sparse[m] - dense[m]).abs().max() < 1e-5, m
        assert torch.all(sparse[m][inputs[m][1]] == 0)  # padding comes out as zeros
    assert aux["load_balancing_loss"] > 0 and aux["router_z_loss"] > 0


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_an_utterance_does_not_depend_on_its_batch(topology):
    """Padding is never routed: utterance 1 alone == utterance 1 inside the padded batch."""
    proj = make_smop(topology)
    inputs = make_inputs()
    batch_out, _ = proj(inputs)
    alone = {m: (x[1:2, : int((~pad[1]).sum())], pad[1:2, : int((~pad[1]).sum())]) for m, (x, pad) in inputs.items()}
    alone_out, _ = proj(alone)
    for m in inputs:
        n = alone[m][0].shape[1]
        assert torch.allclose(batch_out[m][1, :n], alone_out[m][0], atol=1e-6)


def test_top_k_weights_sum_to_one_and_follow_the_probabilities():
    logits = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    probs, weights, experts = route(logits.to(torch.bfloat16), 3)
    assert probs.dtype == torch.float32  # softmax in float32 whatever the model dtype
    assert torch.allclose(weights.sum(-1), torch.ones(50))
    assert torch.equal(experts, probs.topk(3, dim=-1).indices)
    assert torch.all(weights[:, :-1] >= weights[:, 1:])


def test_load_balancing_loss_is_minimal_for_uniform_routing_and_grows_with_imbalance():
    n, e, k = 400, 4, 2
    g = torch.Generator().manual_seed(0)
    values = []
    for skew in (0.0, 1.0, 2.0, 4.0):  # logits biased towards expert 0 by `skew`
        logits = 0.01 * torch.randn(n, e, generator=g)
        logits[:, 0] += skew
        probs, _, experts = route(logits, k)
        values.append(float(load_balancing_loss(probs, experts)))
    assert abs(values[0] - k) < 0.05  # uniform: ~k, the minimum
    assert values == sorted(values) and values[-1] > values[0] + 0.3
    # Exactly uniform router probabilities with perfectly balanced assignments give exactly k.
    probs = torch.full((n, e), 1 / e)
    experts = torch.stack([torch.arange(n) % e, (torch.arange(n) + 1) % e], dim=1)
    assert float(load_balancing_loss(probs, experts)) == pytest.approx(k)


def _grads(proj, loss) -> dict[str, float]:
    proj.zero_grad()
    loss.backward()
    return {n: float(p.grad.abs().sum()) if p.grad is not None else 0.0 for n, p in proj.named_parameters()}


def test_dedr_audio_tokens_never_reach_video_experts_or_router():
    proj = make_smop("dedr")
    inputs = make_inputs()
    out, _ = proj(inputs)
    grads = _grads(proj, out["audio"].pow(2).sum())
    assert any(v > 0 for n, v in grads.items() if n.startswith("pools.audio."))
    assert grads["routers.audio.weight"] > 0
    assert all(v == 0 for n, v in grads.items() if ".video" in n)
    # and perturbing every video parameter leaves the audio output unchanged
    with torch.no_grad():
        for n, p in proj.named_parameters():
            if ".video" in n:
                p.add_(1.0)
    assert torch.equal(proj(inputs)[0]["audio"], out["audio"])


def test_jedr_audio_tokens_reach_every_shared_expert_only_through_the_audio_router():
    proj = make_smop("jedr")
    inputs = make_inputs()
    assert set(proj.pools) == {"joint"} and set(proj.routers) == {"audio", "video"}
    for target in range(proj.num_experts):  # steer the audio router to each expert in turn
        with torch.no_grad():
            proj.routers["audio"].weight.zero_()
            proj.routers["audio"].weight[target] = 0.0
            proj.routers["audio"].weight[target, 0] = 50.0  # large logit for feature 0 > 0 tokens
        x, pad = inputs["audio"]
        steered = {"audio": (x.abs(), pad), "video": inputs["video"]}
        out, _ = proj(steered)
        grads = _grads(proj, out["audio"].sum())
        assert grads["routers.video.weight"] == 0  # the video router never sees audio tokens
        assert grads[f"pools.joint.experts.{target}.net.0.weight"] > 0
    # Audio output does not depend on the video router.
    out, _ = proj(inputs)
    with torch.no_grad():
        proj.routers["video"].weight.add_(3.0)
    assert torch.equal(proj(inputs)[0]["audio"], out["audio"])


def test_jejr_routes_both_modalities_with_one_router_and_one_pool():
    proj = make_smop("jejr")
    inputs = make_inputs()
    assert set(proj.pools) == {"joint"} and set(proj.routers) == {"joint"}
    out, aux = proj(inputs)
    grads = _grads(proj, out["video"].pow(2).sum())
    assert grads["routers.joint.weight"] > 0
    # The auxiliary losses cover the audio and video tokens together (one router).
    x = torch.cat([inputs[m][0][~inputs[m][1]] for m in ("audio", "video")])
    probs, _, experts = route(proj.routers["joint"](x), proj.top_k)
    assert torch.allclose(aux["smop/load_balancing"], load_balancing_loss(probs, experts))
    assert int(aux["usage/audio/tokens"]) == 15 and int(aux["usage/video/tokens"]) == 12


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_one_modality_present_routes_only_that_modality(topology):
    proj = make_smop(topology)
    inputs = make_inputs()
    only_audio = {"audio": inputs["audio"]}
    out, aux = proj(only_audio)
    assert set(out) == {"audio"} and "usage/video/tokens" not in aux
    assert torch.allclose(out["audio"], proj(inputs)[0]["audio"], atol=1e-6)  # routing is per token
    # Usage sums: k assignments per real token, weights summing to one per token.
    assert float(aux["usage/audio/routed"].sum()) == 2 * 15
    assert float(aux["usage/audio/gate"].sum()) == pytest.approx(15, abs=1e-4)


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="topology"):
        make_smop("jejx")
    with pytest.raises(ValueError, match="top_k"):
        make_smop("dedr", experts=2, top_k=3)


def test_only_routers_experts_lora_and_new_tokens_train_in_the_avsr_model():
    model = tiny_model(projector="smop", smop_topology="jedr", smop_experts=3)
    batch = make_batch([20, 14], seed=2)
    loss, aux = model(batch, "avsr")
    total = loss + aux["load_balancing_loss"] + aux["router_z_loss"]
    model.zero_grad()
    total.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    allowed = ("projector.routers.", "projector.pools.", "projector.align.")
    assert all("lora_" in n or n.startswith(allowed) or n == "new_token_embed" for n in trainable)
    assert {n.split(".")[2] for n in trainable if n.startswith("projector.routers.")} == {"audio", "video"}
    for n, p in model.named_parameters():
        if n not in trainable:
            assert p.grad is None, n
    for n in ("projector.routers.audio.weight", "projector.routers.video.weight"):
        assert float(dict(model.named_parameters())[n].grad.abs().sum()) > 0


def test_parameter_counts_match_the_paper_for_jejr_llama_1b():
    """papers.md section 5: JEJR, 4 experts, Whisper-M/AV-HuBERT-L (1024) -> Llama 3.2-1B (2048):
    25.2 M projector parameters, 12.6 M active per token."""
    with torch.device("meta"):
        proj = SparseMixtureProjector({"audio": 1024, "video": 1024}, 2048, 2048, True,
                                      topology="jejr", num_experts=4, top_k=2)
    total = sum(p.numel() for p in proj.parameters())
    assert round(total / 1e6, 1) == 25.2 and round(proj.active_parameters() / 1e6, 1) == 12.6
    assert not proj.align  # equal widths: no alignment maps
