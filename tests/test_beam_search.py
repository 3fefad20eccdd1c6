"""Our beam search (one prefill per utterance) against transformers' generate: same hypotheses,
same scores, whatever the batch."""

import pytest
import torch

from avsr.models.beam_search import beam_search
from conftest import make_batch, take, tiny_model

VOCAB, BOS, EOS, PAD = 97, 1, 2, 0
STEPS = 12


def tiny_llm(eos_bias: float = 0.0):
    """A seeded 2-layer Llama in eval mode; `eos_bias` is added to the EOS logit (the output layer gets a bias)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
                                       bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD))
    head = torch.nn.Linear(32, VOCAB, bias=True)
    with torch.no_grad():
        head.weight.copy_(llm.lm_head.weight)
        head.bias.zero_()
        head.bias[EOS] = eos_bias
    llm.lm_head = head
    return llm.eval()


def prefixes(lengths=(7, 12, 4), seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prefix embeddings (B, L, 32), left-padded with random values the mask (B, L) hides."""
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(len(lengths), max(lengths), 32, generator=g)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, max(lengths) - n:] = 1
    return embeds, mask


def hf_search(llm, embeds, mask, beams: int, steps: int = STEPS) -> tuple[list[list[int]], torch.Tensor]:
    """transformers' generate: hypotheses (cut after EOS) and scores (greedy: mean token log-probability)."""
    out = llm.generate(inputs_embeds=embeds, attention_mask=mask, num_beams=beams, max_new_tokens=steps,
                       do_sample=False, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=BOS, temperature=None,
                       top_p=None, top_k=None, output_scores=True, return_dict_in_generate=True)
    hyps = [strip(row) for row in out.sequences.tolist()]
    if beams > 1:
        return hyps, out.sequences_scores.float()
    logp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)  # (B, S, V)
    token = logp.gather(2, out.sequences[..., None])[..., 0]  # (B, S)
    return hyps, torch.tensor([float(token[i, :len(h)].mean()) for i, h in enumerate(hyps)])


def ours(llm, embeds, mask, beams: int, steps: int | torch.Tensor = STEPS) -> tuple[list[list[int]], torch.Tensor]:
    tokens, scores, token_logp, lengths = beam_search(llm, embeds, mask, beams, steps, EOS, PAD)
    assert tokens.dtype == torch.long and scores.dtype == torch.float32 and scores.shape == (embeds.shape[0],)
    assert token_logp.shape == tokens.shape and lengths.tolist() == [len(strip(r)) for r in tokens.tolist()]
    return [strip(row) for row in tokens.tolist()], scores


def strip(row: list[int]) -> list[int]:
    """Tokens up to and including the first EOS (all of them without one: it ran to the length limit)."""
    return row[: row.index(EOS) + 1] if EOS in row else row


@pytest.mark.parametrize("eos_bias", [0.0, 2.0, -1e4], ids=["plain", "frequent-eos", "no-eos"])
@pytest.mark.parametrize("beams", [1, 2, 4, 15])
def test_same_hypotheses_and_scores_as_generate(beams, eos_bias):
    llm = tiny_llm(eos_bias)
    embeds, mask = prefixes()
    want_hyps, want_scores = hf_search(llm, embeds, mask, beams)
    got_hyps, got_scores = ours(llm, embeds, mask, beams)
    assert got_hyps == want_hyps
    assert torch.allclose(got_scores, want_scores, atol=1e-5, rtol=0), (got_scores, want_scores)
    lengths = {len(h) for h in got_hyps}
    if eos_bias > 0:  # hypotheses end on EOS at different steps, before the limit
        assert len(lengths) > 1 and min(lengths) < STEPS
    if eos_bias < 0:  # nothing ends before the limit
        assert lengths == {STEPS} and not any(EOS in h for h in got_hyps)


def test_an_utterance_stops_when_it_cannot_improve():
    """transformers' default stopping rule (early_stopping=False) decides this case: searching on
    to the length limit ("never") finds a better hypothesis for the first utterance."""
    llm = tiny_llm(2.0)
    embeds, mask = prefixes()
    want_hyps, want_scores = hf_search(llm, embeds, mask, 2)
    longer = llm.generate(inputs_embeds=embeds, attention_mask=mask, num_beams=2, max_new_tokens=STEPS,
                          do_sample=False, eos_token_id=EOS, pad_token_id=PAD, early_stopping="never",
                          temperature=None, top_p=None, top_k=None, output_scores=True, return_dict_in_generate=True)
    assert strip(longer.sequences[0].tolist()) != want_hyps[0] and longer.sequences_scores[0] > want_scores[0]
    got_hyps, got_scores = ours(llm, embeds, mask, 2)
    assert got_hyps == want_hyps and torch.allclose(got_scores, want_scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("beams", [1, 4])
def test_an_utterance_decodes_alike_alone_or_in_a_batch(beams):
    llm = tiny_llm(2.0)
    embeds, mask = prefixes()
    hyps, scores = ours(llm, embeds, mask, beams)
    for i in range(embeds.shape[0]):
        real = mask[i].bool()
        alone_hyps, alone_scores = ours(llm, embeds[i:i + 1, real], mask[i:i + 1, real], beams)
        assert alone_hyps[0] == hyps[i]
        assert abs(float(alone_scores[0]) - float(scores[i])) < 1e-5


@pytest.mark.parametrize("beams", [1, 4])
def test_token_log_probabilities_add_up_to_the_score(beams):
    llm = tiny_llm(2.0)
    embeds, mask = prefixes()
    found = beam_search(llm, embeds, mask, beams, STEPS, EOS, PAD)
    for n, logp, score in zip(found.lengths.tolist(), found.token_logp, found.scores):
        assert bool((logp[:n] < 0).all()) and bool((logp[n:] == 0).all())
        assert abs(float(logp[:n].sum()) / n - float(score)) < 1e-5


@pytest.mark.parametrize("beams", [1, 4])
def test_a_limit_per_utterance_decodes_each_as_alone_with_its_limit(beams):
    """Per-utterance token limits (a longer recording may say more): each utterance ends at its own
    limit or earlier, with the hypothesis and score it gets decoded alone at that limit."""
    llm = tiny_llm(-1e4)  # no EOS: every hypothesis runs to its limit
    embeds, mask = prefixes()
    caps = torch.tensor([3, 9, 5])
    tokens, scores, _, lengths = beam_search(llm, embeds, mask, beams, caps, EOS, PAD)
    assert tokens.shape == (3, 9) and lengths.tolist() == caps.tolist()
    for i, cap in enumerate(caps.tolist()):
        real = mask[i].bool()
        alone_hyps, alone_scores = ours(llm, embeds[i:i + 1, real], mask[i:i + 1, real], beams, cap)
        assert alone_hyps[0] == tokens[i, :cap].tolist() and set(tokens[i, cap:].tolist()) <= {PAD}
        assert abs(float(alone_scores[0]) - float(scores[i])) < 1e-5
    with pytest.raises(ValueError, match="positive"):
        beam_search(llm, embeds, mask, beams, torch.tensor([3, 0, 5]), EOS, PAD)


def test_bad_sizes_are_refused():
    llm = tiny_llm()
    embeds, mask = prefixes()
    with pytest.raises(ValueError, match="positive"):
        beam_search(llm, embeds, mask, 0, STEPS, EOS, PAD)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize("beams", [1, 4])
def test_model_generate_agrees_with_transformers(model, beams):
    """Ours batched against transformers one utterance at a time (the papers' setting) and
    batched (finished rows are fed EOS, not the tokenizer's added <pad>, beyond the LLM's vocabulary)."""
    batch = make_batch([18, 35, 26], seed=1)
    texts, aux = model.generate(batch, "avsr", num_beams=beams, max_new_tokens=8, return_scores=True)
    ref = [model.generate(take(batch, i), "avsr", num_beams=beams, max_new_tokens=8, return_scores=True,
                          search="transformers") for i in range(3)]
    assert texts == [r[0][0] for r in ref] and any(texts)
    assert aux["scores"].dtype == torch.float32 and aux["scores"].shape == (3,)
    assert torch.allclose(aux["scores"], torch.cat([r[1]["scores"] for r in ref]), atol=1e-5, rtol=0)
    assert model.generate(batch, "avsr", num_beams=beams, max_new_tokens=8) == texts
    assert model.generate(batch, "avsr", num_beams=beams, max_new_tokens=8, search="transformers") == texts


def test_model_generate_refuses_what_its_search_does_not_do(model):
    batch = make_batch([12], seed=2)
    with pytest.raises(ValueError, match="repetition_penalty"):
        model.generate(batch, "avsr", num_beams=2, max_new_tokens=4, repetition_penalty=1.2)
    with pytest.raises(ValueError, match="sampl"):
        model.generate(batch, "avsr", num_beams=2, max_new_tokens=4, do_sample=True)
    with pytest.raises(ValueError, match="search"):
        model.generate(batch, "avsr", num_beams=2, max_new_tokens=4, search="fast")
