"""The AVSR model on tiny random backbones: masking, batch invariance, LoRA, checkpoints."""

import numpy as np
import pytest
import torch

from avsr.models.avsr_model import IGNORE
from avsr.models.compression import compress
from avsr.models.loading import load_checkpoint, save_checkpoint
from avsr.models.lora import LoRALinear, set_active
from avsr.models.masks import lengths_to_padding_mask
from conftest import make_batch, take, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize("mode", ["avg-pooling", "stack"])
def test_compression_lengths_for_every_rate(mode):
    x = torch.randn(3, 50, 8)
    lengths = torch.tensor([50, 37, 3])
    pad = lengths_to_padding_mask(lengths, 50)
    for rate in range(1, 21):
        y, ypad = compress(x.masked_fill(pad[..., None], 0), pad, rate, mode)
        expected = torch.clamp(lengths // rate, min=1)
        assert torch.equal((~ypad).sum(1), expected)
        assert y.shape[-1] == (8 * rate if mode == "stack" and rate > 1 else 8)
        if mode == "avg-pooling" and rate > 1:  # first token = mean of the first K real frames
            assert torch.allclose(y[0, 0], x[0, :rate].mean(0), atol=1e-6)
            assert torch.allclose(y[2, 0], x[2, : min(rate, 3)].mean(0), atol=1e-6)  # short clip: its own frames only
        assert float(y.masked_select(ypad[..., None]).abs().sum()) == 0.0


def test_loss_is_on_transcript_and_eos_only(model):
    batch = make_batch([30, 22])
    tokens, _ = model.encode(batch, "avsr")
    embeds, mask, labels = model.assemble(tokens[model.default_pair("avsr")], "avsr", model.targets(batch["text"]))
    for i, text in enumerate(batch["text"]):
        target = model.tokenizer(text, add_special_tokens=False)["input_ids"] + [model.eos]
        real = labels[i][labels[i] != IGNORE].tolist()
        assert real == target  # exactly the transcript and EOS carry labels
        n = int(mask[i].sum())
        assert (labels[i, n:] == IGNORE).all() and (mask[i, n:] == 0).all()  # padding: no loss, no attention
        assert labels[i, n - len(target):n].tolist() == target  # at the end of the sequence
    loss, _ = model(batch, "avsr")
    logits = model.llm(inputs_embeds=embeds, attention_mask=mask).logits
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                               ignore_index=IGNORE)
    assert torch.allclose(loss, manual, atol=1e-5)


@pytest.mark.parametrize("task", ["asr", "vsr", "avsr"])
def test_decoding_does_not_depend_on_the_batch(model, task):
    batch = make_batch([18, 35, 26], seed=1)
    together = model.generate(batch, task, num_beams=2, max_new_tokens=8)
    alone = [model.generate(take(batch, i), task, num_beams=2, max_new_tokens=8)[0] for i in range(3)]
    assert together == alone and any(together)
    # The loss does not depend on the batch either: the batch's loss is the mean over all its
    # target tokens (transcript + EOS), so it is the token-weighted mean of the items' own losses.
    with torch.no_grad():
        loss_together = model(batch, task)[0]
        alone_losses = [model(take(batch, i), task)[0] for i in range(3)]
    targets = [len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in batch["text"]]
    weighted = sum(n * float(l) for n, l in zip(targets, alone_losses)) / sum(targets)
    assert float(loss_together) == pytest.approx(weighted, abs=1e-5)
    assert len({round(float(l), 3) for l in alone_losses}) == 3  # the items' losses really differ


def test_lora_starts_as_identity_and_only_new_parts_train(model):
    batch = make_batch([20, 14], seed=2)
    tokens, _ = model.encode(batch, "avsr")
    embeds, mask, _ = model.assemble(tokens[model.default_pair("avsr")], "avsr", model.targets(batch["text"]))
    with torch.no_grad():
        with_lora = model.llm(inputs_embeds=embeds, attention_mask=mask).logits
        set_active(model.llm, ())
        without = model.llm(inputs_embeds=embeds, attention_mask=mask).logits
        set_active(model.llm, ("shared",))
    assert torch.equal(with_lora, without)
    model.zero_grad()
    loss, _ = model(batch, "avsr")
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or n.startswith("projector.") or n == "new_token_embed" for n in trainable)
    assert any(n.startswith("projector.mlps.audio") for n in trainable) and any(n.startswith("projector.mlps.video") for n in trainable)
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    grads = {n: float(p.grad.abs().sum()) for n, p in model.named_parameters() if p.grad is not None}
    assert all(v > 0 for n, v in grads.items() if "lora_B" in n or n.startswith("projector.") or n == "new_token_embed")
    n_lora = sum(isinstance(m, LoRALinear) for m in model.llm.modules())
    assert n_lora == 2 * 2  # q and v in both layers
    model.zero_grad()


def test_checkpoint_round_trip(tmp_path):
    model = tiny_model(seed=3)
    with torch.no_grad():  # make the trainable weights non-trivial
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    batch = make_batch([25, 17], seed=4)
    before = model.generate(batch, "avsr", num_beams=2, max_new_tokens=8)
    save_checkpoint(model, tmp_path / "ckpt", {"note": "test"})
    fresh = tiny_model(seed=3)  # same frozen backbones, fresh trainable weights
    assert fresh.generate(batch, "avsr", num_beams=2, max_new_tokens=8) != before
    load_checkpoint(tmp_path / "ckpt", fresh)
    assert fresh.generate(batch, "avsr", num_beams=2, max_new_tokens=8) == before


def test_a_few_steps_lower_the_loss():
    model = tiny_model(seed=5).train()
    batch = make_batch([20, 16], seed=6)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(25):
        loss, _ = model(batch, ("asr", "vsr", "avsr")[step % 3])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])


def test_the_loss_equals_the_llm_s_own_cross_entropy():
    """Our loss runs the output layer at the labelled positions only; it must equal the mean
    token cross-entropy the LLM computes over all positions (float32)."""
    model = tiny_model()
    batch = make_batch([20, 14], seed=3)
    targets = model.targets(batch["text"])
    tokens, _ = model.encode(batch, "avsr")
    embeds, mask, labels = model.assemble(tokens[model.default_pair("avsr")], "avsr", targets)
    reference = model.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
    ours, _ = model(batch, "avsr")
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
