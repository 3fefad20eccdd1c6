"""The training path end to end on tiny backbones: Lightning loop, checkpoints, resume, eval, WER."""

import csv
import json
import re
import sys
import time
import types
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from avsr.evaluation.report import write_report
from avsr.evaluation.score import evaluate
from avsr.text import word_errors
from avsr.models.loading import Checkpoint, load_checkpoint
from avsr.data.manifests import read_manifest
from avsr.paths import RECIPES, recipe as find_recipe
from avsr.training.config import ConfigError, config_from_dict, load_config, save_config
from avsr.training.train import train, warmup_cosine
from conftest import tiny_model


def test_wer_counts_substitutions_deletions_insertions():
    c = word_errors(["bin blue at f two now", "set red"], ["bin blue at s two", "set red red soon"])
    assert (c.substitutions, c.deletions, c.insertions, c.reference_words) == (1, 1, 2, 8)
    assert c.wer == pytest.approx(4 / 8)
    assert word_errors(["Hello, World!"], ["hello world"]).wer == 0.0  # documented normalisation
    assert word_errors(["a b"], [""]).deletions == 2


def test_config_recipe_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  tasks: [asr]\n  lora_rank: 8\noptim:\n  lr: 1.0e-3\n")
    cfg = load_config(recipe, ["optim.lr=5e-4", "model.tasks=[vsr,avsr]", "data.snrs=[0, null]"])
    assert cfg.optim.lr == 5e-4 and cfg.model.tasks == ("vsr", "avsr") and cfg.model.lora_rank == 8
    assert cfg.data.snrs == (0, None) and cfg.optim.max_steps == 2000  # untouched defaults stay
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(recipe, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="recipe not found"):
        load_config(tmp_path / "missing.yaml")
    variant = tmp_path / "variant.yaml"  # a variant states only what it changes
    variant.write_text("base: r.yaml\nmodel:\n  projector: smop\n")
    cfg = load_config(variant)
    assert cfg.model.projector == "smop" and cfg.model.lora_rank == 8 and cfg.optim.lr == 1e-3
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "loop.yaml")


def test_warmup_then_cosine_to_zero():
    f = warmup_cosine(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(60) == pytest.approx(0.5)
    assert f(110) == pytest.approx(0.0, abs=1e-9)


def run_training(tiny_corpus, out: Path, steps: int, cache: int, extra: tuple = (), callbacks=(), **model_overrides):
    corpus_cfg, _ = tiny_corpus
    cfg = load_config(None, [f"data.root={corpus_cfg.out}", f"out={out}", f"optim.max_steps={steps}",
                             "optim.warmup_steps=2", "optim.lr=6e-3", "data.max_frames=200", "log_every=1",
                             "val_every=0", f"checkpoint_every={steps}", f"data.feature_cache_copies={cache}",
                             *extra])
    model = tiny_model(seed=11, **model_overrides)
    model.cfg.llm = "unused-in-tests"
    return train(cfg, model=model, progress=False, callbacks=callbacks), model


def logged_losses(out: Path) -> list[float]:
    rows = list(csv.DictReader(open(next(out.glob("logs/version_*/metrics.csv")))))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


@pytest.mark.parametrize("cache", [0, 2])
def test_training_lowers_the_loss_and_saves_a_checkpoint(tiny_corpus, tmp_path, cache):
    checkpoint, model = run_training(tiny_corpus, tmp_path / "run", steps=24, cache=cache)
    losses = logged_losses(tmp_path / "run")
    assert len(losses) >= 20 and np.mean(losses[-4:]) < 0.85 * np.mean(losses[:4])
    saved = Checkpoint.open(checkpoint, find_backbones=False).saved
    assert saved["step"] == 24 and saved["train"]["optim"]["max_steps"] == 24
    assert (tmp_path / "run" / "config.yaml").is_file()
    fresh = tiny_model(seed=11)
    load_checkpoint(checkpoint, fresh)
    state = {k: v for k, v in model.trainable_state_dict().items()}
    assert all(torch.equal(state[k], v) for k, v in fresh.trainable_state_dict().items())


def test_feature_cache_on_disk_is_reused_by_a_second_training(tiny_corpus, tmp_path, monkeypatch):
    from avsr.training.feature_cache import FeatureCache

    extra = (f"data.feature_cache_dir={tmp_path / 'features'}",)
    run_training(tiny_corpus, tmp_path / "a", steps=3, cache=2, extra=extra)
    stored = list((tmp_path / "features").glob("features-*.pt"))
    assert len(stored) == 1 and not list((tmp_path / "features").glob("*.tmp"))

    def no_encoders(*args, **kwargs):
        raise AssertionError("the encoders ran although the features were on disk")

    monkeypatch.setattr(FeatureCache, "_compute", no_encoders)
    run_training(tiny_corpus, tmp_path / "b", steps=3, cache=2, extra=extra)
    assert logged_losses(tmp_path / "a") == logged_losses(tmp_path / "b")
    for i, other in enumerate(("data.snrs=[0]", "data.audio_time_mask=false", "data.video_time_mask=false")):
        with pytest.raises(AssertionError, match="encoders ran"):  # other augmentation: other features
            run_training(tiny_corpus, tmp_path / f"c{i}", steps=3, cache=2, extra=extra + (other,))


def test_training_augmentation_follows_the_time_mask_settings(tiny_corpus, tmp_path):
    """With clean audio only, a training item is the file itself unless the time masks are on."""
    from avsr.data.media import read_audio
    from avsr.training.train import make_loaders

    root = Path(tiny_corpus[0].out)
    audio = {}
    for masks in ("true", "false"):
        cfg = load_config(None, [f"data.root={root}", f"out={tmp_path}", "data.snrs=[null]",
                                 f"data.audio_time_mask={masks}", f"data.video_time_mask={masks}"])
        train_loader, _ = make_loaders(cfg, tiny_model(seed=11), progress=False)
        audio[masks] = np.asarray(train_loader.dataset[0]["audio"])
    row = train_loader.dataset.dataset.rows[0]
    wav = read_audio((root / "synth" / row.id).with_suffix(".wav"))
    assert np.array_equal(audio["false"], wav)
    assert audio["true"].shape == wav.shape and (audio["true"] == 0).sum() > (wav == 0).sum() + 100


def test_feature_cache_copy_k_is_the_encoders_output_for_epoch_k(tiny_corpus):
    """The cache reads each utterance once and augments it once per copy: copy k must be exactly
    what the encoders give for the training set's item in epoch k (augmentation included)."""
    from avsr.data.batching import TransformedDataset, collate
    from avsr.data.dataset import AVDataset
    from avsr.data.noise import read_noise
    from avsr.data.transforms import AugmentConfig, TrainTransform
    from avsr.training.feature_cache import FeatureCache

    root = Path(tiny_corpus[0].out)
    model = tiny_model(seed=11).eval()
    noise = read_noise(root / "noise" / "synth_babble.wav")
    train = TransformedDataset(AVDataset(root, root / "labels" / "synth_train.csv"),
                               TrainTransform(AugmentConfig(snrs=(0, 5)), noise=noise), seed=3)
    cache = FeatureCache(model.encoders, train, copies=2, max_frames=200, progress=False)
    for index in (0, len(train) - 1):
        for copy in (0, 1):
            train.set_epoch(copy)
            batch = collate([train[index]])
            cache.set_epoch(copy)
            cached = cache[index]
            with torch.no_grad():
                for m in ("audio", "video"):
                    x, _ = model.encoders[m](batch[m], batch[f"{m}_lengths"])  # (1, T, D)
                    # float16 storage; batched vs alone differ in float rounding only
                    assert (cached[f"{m}_features"].float() - x[0]).abs().max() < 5e-3, (index, copy, m)
        cache.set_epoch(0)
        first = cache[index]["audio_features"]
        cache.set_epoch(1)
        assert (first - cache[index]["audio_features"]).abs().max() > 0.02  # the copies are augmented differently


class StopAfter(L.Callback):
    """Ends a run after `step` optimizer steps, as an interruption would (same config)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_training_resumes_mid_epoch_as_if_never_stopped(tiny_corpus, tmp_path):
    # 4 batches per epoch here: the stop after step 6 is in the middle of the second epoch
    extra = ("checkpoint_every=6",)
    run_training(tiny_corpus, tmp_path / "straight", steps=10, cache=2, extra=extra)
    run_training(tiny_corpus, tmp_path / "run", steps=10, cache=2, extra=extra, callbacks=[StopAfter(6)])
    assert Checkpoint.open(tmp_path / "run" / "checkpoints" / "last", find_backbones=False).step == 6
    checkpoint, _ = run_training(tiny_corpus, tmp_path / "run", steps=10, cache=2, extra=extra)
    assert Checkpoint.open(checkpoint, find_backbones=False).step == 10
    versions = sorted((tmp_path / "run" / "logs").glob("version_*/metrics.csv"))
    rows = [r for r in csv.DictReader(open(versions[-1])) if r.get("train/loss")]
    assert min(int(r["step"]) for r in rows) >= 6  # the second run continued, it did not start over
    # same batches (sampler position, the epoch's feature copy), weights and optimizer state
    # as the uninterrupted run: the same losses
    straight = logged_losses(tmp_path / "straight")
    assert [float(r["train/loss"]) for r in rows] == pytest.approx(straight[6:], abs=1e-5)


def test_smop_training_adds_and_logs_the_router_losses(tiny_corpus, tmp_path):
    checkpoint, model = run_training(tiny_corpus, tmp_path / "run", steps=4, cache=0, projector="smop",
                                     smop_topology="dedr", smop_experts=3)
    rows = list(csv.DictReader(open(next((tmp_path / "run").glob("logs/version_*/metrics.csv")))))
    lb = [float(r["train/smop/load_balancing"]) for r in rows if r.get("train/smop/load_balancing")]
    assert len(lb) == 4 and all(v >= 2.0 - 1e-4 for v in lb)  # >= k (= 2), its minimum
    usage = [[float(r[f"train/usage/audio/routed_e{e}"]) for e in range(3)] for r in rows
             if r.get("train/usage/audio/routed_e0")]
    assert usage and all(sum(u) == pytest.approx(2.0) for u in usage)  # k experts per token
    assert Checkpoint.open(checkpoint, find_backbones=False).saved["model"]["projector"] == "smop"
    fresh = tiny_model(seed=11, projector="smop", smop_topology="dedr", smop_experts=3)
    trained, untrained = model.trainable_state_dict(), fresh.trainable_state_dict()
    assert trained.keys() == untrained.keys()
    changed = {k for k in trained if not torch.equal(trained[k], untrained[k])}
    # training moved the routers and the experts, so loading them is not a no-op
    assert any(".routers." in k for k in changed) and any(".pools." in k for k in changed), sorted(changed)
    load_checkpoint(checkpoint, fresh)
    loaded = fresh.trainable_state_dict()
    assert loaded.keys() == trained.keys()
    assert [k for k in trained if not torch.equal(loaded[k], trained[k])] == []  # every weight as trained


def words(text: str) -> list[str]:
    """The documented WER normalisation (avsr.text), written again: lowercase; letters, digits and
    apostrophes; anything else separates words; apostrophes at a word's ends dropped."""
    return [w.strip("'") for w in re.split(r"[^a-z0-9']+", text.lower()) if w.strip("'")]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (S + D + I of a minimal alignment), by dynamic programming."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1]


SECONDS_PER_UTTERANCE = 0.25


def fake_decoding_clock(monkeypatch, model) -> None:
    """Make decoding take a known time: the evaluation code's clock (its `time` module) stands
    still except inside `model.generate`, which advances it by SECONDS_PER_UTTERANCE per
    utterance of the batch. The RTF is then known exactly, however loaded the machine is."""
    clock = [1000.0]
    fake = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    for name in ("perf_counter", "monotonic", "time", "process_time"):
        setattr(fake, name, lambda: clock[0])
    patched = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("avsr.evaluation") and module is not None:
            if getattr(module, "time", None) is time:
                monkeypatch.setattr(module, "time", fake)
                patched += 1
            if getattr(module, "perf_counter", None) is time.perf_counter:
                monkeypatch.setattr(module, "perf_counter", fake.perf_counter)
                patched += 1
    assert patched, "no avsr.evaluation module reads the clock: update fake_decoding_clock"
    generate = model.generate

    def timed_generate(batch, *args, **kwargs):
        out = generate(batch, *args, **kwargs)
        clock[0] += SECONDS_PER_UTTERANCE * len(batch["text"])
        return out

    monkeypatch.setattr(model, "generate", timed_generate)


@pytest.mark.parametrize("projector", ["mlp", "smop"])
def test_evaluation_report(tiny_corpus, tmp_path, projector, monkeypatch):
    corpus_cfg, _ = tiny_corpus
    root = Path(corpus_cfg.out)
    model = tiny_model(seed=12, projector=projector, smop_topology="jejr")
    fake_decoding_clock(monkeypatch, model)
    report = evaluate(model, str(root), str(root / "labels" / "synth_test.csv"), ("asr", "vsr", "avsr"),
                      (None, 0), str(root / "noise" / "synth_babble.wav"), num_beams=2, max_new_tokens=6, progress=False)
    assert report["results"]["vsr"]["0 dB"] == report["results"]["vsr"]["clean"]  # VSR hears no noise
    for task in ("asr", "avsr"):
        for cond in ("clean", "0 dB"):
            r = report["results"][task][cond]
            assert r["utterances"] == corpus_cfg.utterances["test"] and r["reference_words"] > 0
    write_report(report, tmp_path / "rep")
    # The numbers against an independent count over what the report wrote: every test utterance
    # with its label's transcript, WER from a word-level edit distance, RTF = decoding seconds
    # (the fake clock's) / seconds of speech (video frames at 25 fps; the audio is cut to them).
    written = json.loads((tmp_path / "rep" / "results.json").read_text())
    labels = {row.id: row for row in read_manifest(root / "labels" / "synth_test.csv")}
    speech_seconds = sum(row.n_frames for row in labels.values()) / 25
    for task in ("asr", "vsr", "avsr"):
        for cond in ("clean", "0 dB"):
            r, rows = written["results"][task][cond], written["hypotheses"][task][cond]
            assert sorted(h["id"] for h in rows) == sorted(labels)
            assert all(h["reference"] == labels[h["id"]].text for h in rows)
            refs, hyps = [words(h["reference"]) for h in rows], [words(h["hypothesis"]) for h in rows]
            n, edits = sum(map(len, refs)), sum(edit_distance(a, b) for a, b in zip(refs, hyps))
            assert r["reference_words"] == n
            assert r["substitutions"] + r["deletions"] + r["insertions"] == edits
            assert r["deletions"] - r["insertions"] == n - sum(map(len, hyps))  # whatever the alignment
            assert r["wer"] == pytest.approx(edits / n, abs=1e-4)
            assert r["rtf"] == pytest.approx(SECONDS_PER_UTTERANCE * len(labels) / speech_seconds, abs=1e-4)
    files = {"results.json", "report.md", "wer_vs_snr.png"}
    if projector == "smop":  # expert usage per task, condition and modality, and its heatmap
        usage = report["expert_usage"]["avsr"]["0 dB"]
        assert set(usage) == {"audio", "video"}
        for m in usage.values():
            assert m["tokens"] > 0 and sum(m["routed_fraction"]) == pytest.approx(2.0, abs=1e-3)
            assert sum(m["mean_gate"]) == pytest.approx(1.0, abs=1e-3)
        assert set(report["expert_usage"]["asr"]["clean"]) == {"audio"}
        files.add("expert_usage.png")
        assert "Expert usage" in (tmp_path / "rep" / "report.md").read_text()
    else:
        assert "expert_usage" not in report
    assert {p.name for p in (tmp_path / "rep").iterdir()} == files
    assert "| ASR |" in (tmp_path / "rep" / "report.md").read_text()


def test_evaluation_counts_known_errors(tiny_corpus, monkeypatch):
    """Hypotheses with known mistakes through `evaluate`: one substitution, deletion or insertion
    per utterance in turn (with case and punctuation that the normalisation ignores)."""
    root = Path(tiny_corpus[0].out)
    order = [row.id for row in read_manifest(root / "labels" / "synth_test.csv")]
    model = tiny_model(seed=12)
    generate = model.generate

    def mistaken(i: int, reference: str) -> str:
        w = reference.split()
        kind = order.index(i) % 3
        if kind == 0:
            w[1] = "zebra"  # S
        elif kind == 1:
            w = w[:-1]  # D
        else:
            w = [w[0].upper() + ","] + w[1:] + ["zebra!"]  # I
        return " ".join(w)

    def fake_generate(batch, *args, **kwargs):
        out = generate(batch, *args, **kwargs)
        texts = [mistaken(i, ref) for i, ref in zip(batch["ids"], batch["text"])]
        return (texts, out[1]) if kwargs.get("return_aux") else texts

    monkeypatch.setattr(model, "generate", fake_generate)
    report = evaluate(model, str(root), str(root / "labels" / "synth_test.csv"), ("asr", "vsr"), (None, 0),
                      str(root / "noise" / "synth_babble.wav"), num_beams=1, max_new_tokens=1, progress=False)
    n = sum(len(row.text.split()) for row in read_manifest(root / "labels" / "synth_test.csv"))
    expected = {"substitutions": len(order[0::3]), "deletions": len(order[1::3]), "insertions": len(order[2::3]),
                "reference_words": n}
    for task in ("asr", "vsr"):
        for cond in ("clean", "0 dB"):
            r = report["results"][task][cond]
            assert {k: r[k] for k in expected} == expected, (task, cond)
            assert r["wer"] == pytest.approx(len(order) / n, abs=1e-4)


RECIPE_FILES = sorted(RECIPES.glob("*.yaml"))


def leaves(tree: dict, prefix: str = "") -> dict:
    """{"model.lora_rank": 8, "task_weights.asr": 1.0, ...} from nested mappings."""
    out = {}
    for k, v in tree.items():
        out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def stated(path: Path) -> dict:
    """A recipe's leaf settings as its YAML states them, its base's (recursively) where it is silent."""
    own = yaml.safe_load(path.read_text()) or {}
    base = own.pop("base", None)
    return {**(stated(path.parent / base) if base else {}), **leaves(own)}


def setting_of(cfg, dotted: str):
    node = cfg
    for key in dotted.split("."):
        node = node[key] if isinstance(node, dict) else getattr(node, key)
    return node


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=lambda p: p.stem)
def test_every_recipe_loads(recipe, tmp_path):
    cfg = load_config(recipe)
    assert cfg.model.tasks and cfg.optim.max_steps > 0
    if "smop" in recipe.name:
        assert cfg.model.projector == "smop" and cfg.model.smop_top_k == 2 and cfg.model.smop_experts == 4
    # found by name, as `avsr train quickstart_smop` finds it
    assert find_recipe(recipe.stem) == recipe and load_config(recipe.stem) == cfg
    # every value the YAML states is in the config; a variant's own values over its base's
    for key, value in stated(recipe).items():
        actual = setting_of(cfg, key)
        value = tuple(value) if isinstance(value, list) else value
        assert actual == value or (isinstance(actual, float) and actual == float(value)), (key, actual, value)
    # a valid config: it survives the run folder's config.yaml and a checkpoint's saved section
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_recipes_named_in_the_docs_are_shipped():
    top = Path(__file__).parents[1]
    readme = (top / "README.md").read_text()
    named = set(re.findall(r"avsr train ([A-Za-z0-9_]+)\b(?![=.])", readme))  # not `avsr train key=value`
    named |= set(re.findall(r"src/avsr/recipes/([A-Za-z0-9_]+)\.yaml", readme))
    for doc in sorted((top / "docs").glob("*.md")):
        named |= set(re.findall(r"src/avsr/recipes/([A-Za-z0-9_]+)\.yaml", doc.read_text()))
    assert "quickstart" in named
    shipped = {p.stem for p in RECIPE_FILES}
    assert named <= shipped, sorted(named - shipped)
    for name in named:
        assert find_recipe(name).parent == RECIPES and load_config(name).optim.max_steps > 0


def test_evaluation_gives_the_same_hypotheses_every_time(tiny_corpus):
    root = Path(tiny_corpus[0].out)
    model = tiny_model(seed=12)
    runs = [evaluate(model, str(root), str(root / "labels" / "synth_test.csv"), ("asr", "avsr"), (None, 0),
                     str(root / "noise" / "synth_babble.wav"), num_beams=2, max_new_tokens=6,
                     progress=False)["hypotheses"] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    assert len(runs[0]["avsr"]["0 dB"]) == tiny_corpus[0].utterances["test"]  # every utterance, not 5


def test_shared_encoders_give_the_hypotheses_of_each_task_decoded_alone(tiny_corpus):
    """evaluate runs each frozen encoder once per batch for all the tasks of a condition (ASR and
    AVSR share the noisy audio's features); every task must get exactly the hypotheses that
    model.generate gives on the raw batch, where its encoders run inside."""
    from torch.utils.data import DataLoader
    from avsr.data.batching import FrameBudgetBatchSampler, TransformedDataset, collate, frame_lengths
    from avsr.data.noise import read_noise
    from avsr.data.transforms import AugmentConfig, EvalTransform
    from avsr.evaluation.decode import labelled_split

    root = Path(tiny_corpus[0].out)
    labels, babble = root / "labels" / "synth_test.csv", root / "noise" / "synth_babble.wav"
    model = tiny_model(seed=12)
    report = evaluate(model, str(root), str(labels), ("asr", "vsr", "avsr"), (0,), str(babble), num_beams=2,
                      max_new_tokens=6, progress=False)
    dataset = labelled_split(root, labels)
    data = TransformedDataset(dataset, EvalTransform(AugmentConfig(), snr_db=0, noise=read_noise(babble), seed=0))
    loader = DataLoader(data, batch_sampler=FrameBudgetBatchSampler(frame_lengths(dataset), 1000, shuffle=False),
                        collate_fn=collate)
    for task in ("asr", "vsr", "avsr"):
        alone = [(i, h) for batch in loader
                 for i, h in zip(batch["ids"], model.generate(batch, task, num_beams=2, max_new_tokens=6))]
        assert [(h["id"], h["hypothesis"]) for h in report["hypotheses"][task]["0 dB"]] == alone, task
    assert len({tuple(h["hypothesis"] for h in report["hypotheses"][t]["0 dB"]) for t in ("asr", "vsr", "avsr")}) == 3


def test_a_run_saved_before_a_setting_existed_resumes_when_it_is_left_at_its_default(tmp_path):
    """check_resume compares the saved configuration key by key; a key an older avsr did not
    write counts as its default, while any real difference is still refused with its name."""
    from avsr.training.train import check_resume

    cfg = load_config("quickstart", [f"out={tmp_path}"])
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["accumulate_grad_batches"], saved["data"]["on_bad_file"]  # settings added later
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert check_resume(cfg) is None
    with pytest.raises(ConfigError, match="accumulate_grad_batches: 1 -> 2"):
        check_resume(load_config("quickstart", [f"out={tmp_path}", "accumulate_grad_batches=2"]))
