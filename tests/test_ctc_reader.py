"""The CTC reader projector (models/projectors/ctc.py) and its pre-training (training/ctc_reader.py)."""

import json

import pytest
import torch
from conftest import make_batch, run_cli, take, tiny_model, tiny_train_args

from avsr.models.projectors.ctc import (CTCProjector, ReaderHead, collapse, fold_of, greedy_ids, pool_runs,
                                        save_reader)


def write_reader(folder, d_in=64, token_ids=(5, 9, 17, 30), hidden=0, rate=4, compression="avg-pooling", seed=0,
                 kernel=1, folds=0):
    """A reader folder with random heads (`folds` more for cross-fitting, each drawn anew)."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    heads = [ReaderHead(d_in, list(token_ids), hidden, kernel=kernel) for _ in range(1 + folds)]
    save_reader(heads[0], folder, {"rate": rate, "compression": compression}, heads[1:])
    return folder


def test_collapse_drops_blanks_and_merges_repeats():
    best = torch.tensor([[0, 3, 3, 0, 3, 2, 2, 0], [1, 1, 1, 0, 0, 0, 0, 0]])
    pad = torch.tensor([[False] * 8, [False] * 3 + [True] * 5])
    run, out_pad = collapse(best, pad)
    # row 0: runs "3 3" | "3" (after a blank: a new token) | "2 2"; row 1: one run, then padding
    assert run.tolist() == [[-1, 0, 0, -1, 1, 2, 2, -1], [0, 0, 0, -1, -1, -1, -1, -1]]
    assert out_pad.tolist() == [[False, False, False], [False, True, True]]
    assert greedy_ids(torch.nn.functional.one_hot(best, 4).float(), pad) == [[3, 3, 2], [1]]
    x = torch.arange(16, dtype=torch.float).reshape(2, 8, 1)
    pooled = pool_runs(x, run, 3)  # (B, N, 1): mean of each run's frames, empty slots zero
    assert pooled[..., 0].tolist() == [[1.5, 4.0, 5.5], [9.0, 0.0, 0.0]]


def test_a_head_over_neighbouring_frames_ignores_what_lies_in_the_padding():
    """kernel 3: the last real frames see their neighbours; past the end of an utterance they
    see zeros, whatever a batch holds there, so the logits equal the utterance's alone."""
    torch.manual_seed(0)
    head = ReaderHead(8, [3, 4, 5], hidden=16, kernel=3).eval()
    x = torch.randn(1, 10, 8)
    batched = torch.cat([x, torch.randn(1, 3, 8)], dim=1)  # three frames of something else after it
    pad = torch.tensor([[False] * 10 + [True] * 3])
    alone = head(x, torch.zeros(1, 10, dtype=torch.bool))  # (1, 10, 4)
    torch.testing.assert_close(head(batched, pad)[:, :10], alone, atol=1e-6, rtol=0)
    assert not torch.allclose(head(batched, torch.zeros_like(pad))[:, 9], alone[:, 9])  # the mask is what does it


def test_peaked_posteriors_give_the_embeddings_of_the_argmax_tokens(tmp_path):
    """A head whose posteriors are one-hot reads frames as exactly the LLM's embeddings of its
    best tokens, one per run, in order; padding rows are zero."""
    reader = write_reader(tmp_path / "reader", d_in=8, token_ids=(5, 9, 17))
    table = torch.randn(40, 16)
    proj = CTCProjector({"audio": 8}, 32, 16, False, reader=str(reader), embeddings=table, rate=4,
                        compression="avg-pooling", residual=False)
    with torch.no_grad():  # frame features one-hot over (blank, 5, 9, 17): the head reads them sharply
        proj.head.net[-1].weight.copy_(torch.eye(4, 8) * 50)
        proj.head.net[-1].bias.zero_()
    frames = [0, 1, 1, 0, 2, 3, 3, 1]  # blank, 5 5, blank, 9, 17 17, 5 -> tokens 5 9 17 5
    x = torch.zeros(2, 8, 8)
    x[0, torch.arange(8), torch.tensor(frames)] = 1.0
    x[1, torch.arange(3), torch.tensor([2, 2, 0])] = 1.0  # 9, then padding
    pad = torch.tensor([[False] * 8, [False] * 3 + [True] * 5])
    out, aux = proj({"audio": (x, pad)})
    assert aux["pad"]["audio"].tolist() == [[False] * 4, [False, True, True, True]]
    assert aux["reader/tokens"].tolist() == [4, 1] and bool((aux["reader/confidence"] > 0.99).all())
    torch.testing.assert_close(out["audio"][0], table[[5, 9, 17, 5]], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["audio"][1, 0], table[9], atol=1e-4, rtol=0)
    assert out["audio"][1, 1:].abs().sum() == 0


def test_top_k_keeps_the_most_probable_tokens(tmp_path):
    reader = write_reader(tmp_path / "reader", d_in=8, token_ids=(1, 2, 3, 4, 6, 7))
    table = torch.randn(10, 5)
    proj = CTCProjector({"audio": 8}, 16, 5, False, reader=str(reader), embeddings=table, rate=4,
                        compression="avg-pooling", residual=False, top_k=1)
    x, pad = torch.randn(1, 12, 8), torch.zeros(1, 12, dtype=torch.bool)
    emb, out_pad, _ = proj.read(x, pad)
    rows = table[proj.head.token_ids]  # (V, D)
    assert (~out_pad).sum() > 0
    for e in emb[0][~out_pad[0]]:  # each token is exactly one row of the table
        assert torch.cdist(e[None], rows).min() < 1e-5


def test_train_dropout_changes_what_the_reader_hears_in_training_only(tmp_path):
    """ctc_train_dropout: in training the head reads dropped-out frames (other tokens, as on
    unseen speech); in evaluation exactly what the head without dropout reads."""
    reader = write_reader(tmp_path / "reader", d_in=8, token_ids=(1, 2, 3, 4, 6, 7), hidden=32)
    table = torch.randn(10, 5)
    kwargs = dict(embeddings=table, rate=4, compression="avg-pooling", residual=False, top_k=1)
    plain = CTCProjector({"audio": 8}, 16, 5, False, reader=str(reader), **kwargs)
    dropped = CTCProjector({"audio": 8}, 16, 5, False, reader=str(reader), train_dropout=0.5, **kwargs)
    x, pad = torch.randn(4, 40, 8), torch.zeros(4, 40, dtype=torch.bool)
    torch.manual_seed(1)
    emb_train, pad_train, _ = dropped.read(x, pad)
    emb_plain, pad_plain, _ = plain.read(x, pad)
    assert pad_train.shape != pad_plain.shape or not torch.equal(emb_train, emb_plain)
    dropped.eval()
    emb_eval, pad_eval, _ = dropped.read(x, pad)
    assert torch.equal(pad_eval, pad_plain) and torch.equal(emb_eval, emb_plain)


@pytest.mark.parametrize("hidden, kernel", [(0, 1), (32, 3)])
def test_model_with_ctc_projector_trains_and_is_batch_independent(tmp_path, hidden, kernel):
    """Also with a head that sees neighbouring frames: the padding after a shorter utterance
    must not reach its last frames."""
    reader = write_reader(tmp_path / "reader", d_in=64, token_ids=tuple(range(4, 40)), hidden=hidden, kernel=kernel)
    model = tiny_model(projector="ctc", ctc_reader=str(reader), tasks=("asr", "avsr"))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("projector.head.") for n in names) and any(n.startswith("projector.residual") for n in names)
    assert any(n.startswith("projector.mlps.video") for n in names)
    batch = make_batch([30, 21, 12])
    model.train()
    loss, _ = model(batch, "asr")
    loss.backward()
    assert torch.isfinite(loss)
    assert model.projector.head.net[-1].weight.grad.abs().sum() > 0, "the LLM loss reaches the CTC head"
    model.eval()
    with torch.no_grad():
        tokens, _ = model.encode(batch, "asr")
        emb, pad = next(iter(tokens.values()))["audio"]
        for i in range(3):  # each utterance alone gives its tokens of the batch
            (alone, alone_pad) = next(iter(model.encode(take(batch, i), "asr")[0].values()))["audio"]
            n = int((~alone_pad).sum())
            assert int((~pad[i]).sum()) == n
            torch.testing.assert_close(emb[i, :n], alone[0, :n], atol=1e-5, rtol=1e-4)
        assert model.generate(batch, "asr", num_beams=2, max_new_tokens=4) == \
            model.generate(batch, "asr", num_beams=2, max_new_tokens=4)


def test_a_reader_that_hears_nothing_leaves_the_transcript_empty(tmp_path):
    """No speech token heard (every frame blank): the LLM is not asked to write a sentence of its
    own; the transcriber says so and flags the segment."""
    from avsr.transcription.transcriber import Piece, judged

    reader = write_reader(tmp_path / "reader", d_in=64, token_ids=tuple(range(4, 40)))
    model = tiny_model(projector="ctc", ctc_reader=str(reader), tasks=("asr",), ctc_train_head=False).eval()
    batch = make_batch([30, 21])
    with torch.no_grad():
        texts, aux = model.generate(batch, "asr", num_beams=2, max_new_tokens=4, return_scores=True)
        assert aux["reader/tokens"].tolist() != [0, 0]
        model.projector.head.net[-1].bias[0] = 1e4  # the blank wins every frame
        texts, aux = model.generate(batch, "asr", num_beams=2, max_new_tokens=4, return_scores=True)
    assert aux["reader/tokens"].tolist() == [0, 0] and texts == ["", ""]
    assert [len(row) for row in aux["token_logp"]] == [0, 0]
    piece = Piece("clip", 30, 0.0, 1.2, None, None)
    segment, said = judged(piece, None, {"hypothesis": "", "score": -0.1, "token_logp": []}, 8)
    assert (segment.text, segment.flags, segment.confidence) == ("", ["nothing_heard"], 0.0)
    assert said == ["0.00-1.20 s: the model wrote nothing (it heard no speech): left empty"]


def test_the_transcript_is_no_longer_than_the_readers_pieces_and_the_slack(tmp_path):
    """ASR through a reader writes at most the reader's pieces + READER_SLACK tokens (EOS aside):
    an LLM that would write on (a loop) is stopped there; other tasks keep max_new_tokens."""
    from avsr.models.avsr_model import READER_SLACK

    reader = write_reader(tmp_path / "reader", d_in=64, token_ids=tuple(range(4, 40)))
    model = tiny_model(projector="ctc", ctc_reader=str(reader), tasks=("asr",), ctc_train_head=False).eval()
    batch = make_batch([30, 21, 12])
    with torch.no_grad():
        model.llm.lm_head.bias = torch.nn.Parameter(torch.zeros(model.llm.lm_head.out_features))
        model.llm.lm_head.bias[model.eos] = -1e4  # never ends by itself: only a cap stops it
        _, aux = model.generate(batch, "asr", num_beams=2, max_new_tokens=60, return_scores=True)
    heard = aux["reader/tokens"].tolist()
    assert min(heard) > 0 and max(heard) + READER_SLACK + 1 < 60
    assert [len(row) for row in aux["token_logp"]] == [n + READER_SLACK + 1 for n in heard]


def test_fold_of_is_a_hash_of_the_normalised_transcript():
    assert fold_of("Hello, World!", 3) == fold_of("hello world", 3)
    # zlib.crc32: the same folds on every machine and Python (not hash(), which is salted per process)
    assert [fold_of(t, 2) for t in ("the cat sat", "a dog", "one more", "and another")] == [0, 1, 1, 1]
    counts = [sum(fold_of(f"sentence number {i}", 3) == k for i in range(300)) for k in range(3)]
    assert min(counts) > 70, counts


def test_cross_fitting_reads_each_training_utterance_with_the_head_that_never_heard_it(tmp_path):
    """In training each row is read by the fold head of its transcript's fold; in evaluation (and
    without transcripts there) by the full head; the fold heads stay out of the checkpoint."""
    reader = write_reader(tmp_path / "reader", d_in=8, token_ids=tuple(range(2, 12)), hidden=16, kernel=3, folds=2)
    table = torch.randn(20, 6)
    kwargs = dict(embeddings=table, rate=4, compression="avg-pooling", residual=False, top_k=1, train_head=False)
    crossed = CTCProjector({"audio": 8}, 16, 6, False, reader=str(reader), cross_fit=True, **kwargs)
    plain = CTCProjector({"audio": 8}, 16, 6, False, reader=str(reader), **kwargs)
    texts = ["the cat sat", "a dog", "one more", "and another"]  # folds 0, 1, 1, 1 (above)
    torch.manual_seed(3)
    x, pad = torch.randn(4, 30, 8), torch.zeros(4, 30, dtype=torch.bool)
    out, aux = crossed({"audio": (x, pad)}, texts=texts)
    for i, text in enumerate(texts):
        emb, row_pad, _ = crossed.read(x[i:i + 1], pad[i:i + 1], torch.tensor([fold_of(text, 2)]))
        n = int((~row_pad).sum())
        assert int((~aux["pad"]["audio"][i]).sum()) == n
        torch.testing.assert_close(out["audio"][i, :n], emb[0, :n])
    full, _ = plain({"audio": (x, pad)})
    assert out["audio"].shape != full["audio"].shape or not torch.equal(out["audio"], full["audio"])
    with pytest.raises(ValueError, match="needs the transcripts in training"):
        crossed({"audio": (x, pad)})
    crossed.eval()
    plain.eval()
    evaluated, _ = crossed({"audio": (x, pad)})
    assert torch.equal(evaluated["audio"], plain({"audio": (x, pad)})[0]["audio"])
    model = tiny_model(projector="ctc", ctc_reader=str(write_reader(tmp_path / "r64", folds=2)), tasks=("asr",),
                       ctc_train_head=False, ctc_cross_fit=True)
    assert not any(".fold_heads." in n or ".head." in n for n in model.trainable_state_dict())
    model.train()
    loss, _ = model(make_batch([30, 21, 12]), "asr")
    assert torch.isfinite(loss)


def test_cross_fitting_needs_fold_heads_and_a_frozen_head(tmp_path):
    from avsr.models.projectors.ctc import ReaderError
    from avsr.settings import SettingError

    reader = write_reader(tmp_path / "reader")
    with pytest.raises(ReaderError, match="holds no fold heads; train it with `avsr pretrain-reader --folds 2`"):
        tiny_model(projector="ctc", ctc_reader=str(reader), tasks=("asr",), ctc_train_head=False, ctc_cross_fit=True)
    with pytest.raises(SettingError, match="ctc_cross_fit.*needs model.projector ctc and model.ctc_train_head false"):
        tiny_model(projector="ctc", ctc_reader=str(write_reader(tmp_path / "folded", folds=2)), tasks=("asr",),
                   ctc_cross_fit=True)


def test_frozen_head_stays_out_of_the_checkpoint(tmp_path):
    reader = write_reader(tmp_path / "reader", d_in=64, token_ids=tuple(range(4, 40)))
    model = tiny_model(projector="ctc", ctc_reader=str(reader), tasks=("asr",), ctc_train_head=False, ctc_residual=False)
    assert not any(n.startswith("projector.head.") for n in model.trainable_state_dict())


def test_reader_mismatch_is_named(tmp_path):
    from avsr.models.projectors.ctc import ReaderError

    reader = write_reader(tmp_path / "reader", d_in=64, rate=2)
    with pytest.raises(ReaderError, match="rate 2"):
        tiny_model(projector="ctc", ctc_reader=str(reader), tasks=("asr",))
    with pytest.raises(ReaderError, match="not a CTC reader folder"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "config.json").write_text("{}")
        tiny_model(projector="ctc", ctc_reader=str(tmp_path / "other"), tasks=("asr",))
    config = json.loads((reader / "config.json").read_text())
    (reader / "config.json").write_text(json.dumps({**config, "kernel": 2}))  # edited by hand
    with pytest.raises(ReaderError, match="config.json does not describe a reader head .*kernel 2"):
        tiny_model(projector="ctc", ctc_reader=str(reader), tasks=("asr",))


def test_pieces_with_every_merge_are_the_tokenizers_own(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

    from avsr.training.ctc_reader import Pieces

    texts = ["the cat sat on the mat", "a dog is not a cat", "don't tell the dog"] * 20
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    every = Pieces(tok, 10**6)
    for text in texts[:3] + ["an unseen sentence"]:
        assert every.encode(text) == tok(" " + text, add_special_tokens=False)["input_ids"]
        assert every.decode(every.encode(text)) == text
    bytes_only = Pieces(tok, 0)
    assert [tok.convert_ids_to_tokens(i) for i in bytes_only.encode("a cat")] == ["Ġ", "a", "Ġ", "c", "a", "t"]
    assert len(Pieces(tok, 5).encode("the cat")) < len(bytes_only.encode("the cat"))


def test_pretrain_reader_then_train_and_eval(tiny_corpus, tiny_backbones, tmp_path):
    """`avsr pretrain-reader` on the tiny corpus writes a reader folder the ctc projector trains
    with (cross-fitted: `--folds 2`); the same seed gives the same reader bytes, and the full head
    is the same with or without fold heads."""
    root = tiny_corpus[0].out
    args = [*tiny_train_args(root, tiny_backbones, tmp_path / "run", 2), "model.projector=ctc", "model.tasks=[asr]",
            "model.audio_rates=[2]", "data.feature_cache_copies=1", f"data.feature_cache_dir={tmp_path / 'features'}"]
    outs = []
    for name, folds in (("reader", "2"), ("again", "2"), ("no-folds", "0")):
        code, out, err = run_cli("pretrain-reader", "--quiet", "quickstart", *args, "--out", tmp_path / name,
                                 "--steps", "4", "--merges", "20", "--hidden", "32", "--kernel", "3", "--folds", folds)
        assert code == 0, err
        outs.append([(tmp_path / name / f).read_bytes() for f in ("model.safetensors", "fold-0.safetensors",
                                                                  "fold-1.safetensors") if (tmp_path / name / f).exists()])
    config = json.loads((tmp_path / "reader" / "config.json").read_text())
    assert config["rate"] == 2 and config["merges"] == 20 and config["kernel"] == 3 and 0 <= config["report"]["val_wer"]
    assert config["folds"] == 2 and [f["steps"] for f in config["report"]["folds"]] == [2, 2]
    # each fold head trained on the utterances outside its fold, together every utterance once
    assert sum(f["utterances"] for f in config["report"]["folds"]) == config["report"]["utterances"]
    assert len(outs[0]) == 3 and outs[0] == outs[1] and outs[2] == outs[0][:1] and outs[0][1] != outs[0][2]
    assert len(list((tmp_path / "features").iterdir())) == 1, "one feature cache for all"
    code, out, err = run_cli("train", "--quiet", "quickstart", *args, f"model.ctc_reader={tmp_path / 'reader'}",
                             "model.ctc_cross_fit=true", "model.ctc_train_head=false")
    assert code == 0, err
    code, out, err = run_cli("eval", str(tmp_path / "run" / "checkpoints" / "last"), "--snrs", "clean", "--beams", "1")
    assert code == 0, err
