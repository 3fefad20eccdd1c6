"""Training/eval data pipeline: transforms (noise, crops, masks, sync), frame-budget batching, collate."""

import math

import numpy as np
import pytest
import torch

from avsr.data.batching import FrameBudgetBatchSampler, TransformedDataset, collate, pack_batches
from avsr.data.noise import white_noise
from avsr.data.transforms import (AugmentConfig, EvalTransform, TrainTransform, mask_spans, stable_seed,
                                  sync_audio, time_mask)

MEAN, STD = 0.421, 0.165


def test_the_avhubert_constants_are_defined_once():
    from avsr.data.transforms import AVHUBERT_CROP_SIZE, AVHUBERT_PIXEL_MEAN, AVHUBERT_PIXEL_STD
    from avsr.models import video_encoder

    assert (AVHUBERT_PIXEL_MEAN, AVHUBERT_PIXEL_STD, AVHUBERT_CROP_SIZE) == (MEAN, STD, 88)
    assert (AugmentConfig().video_mean, AugmentConfig().video_std, AugmentConfig().crop_size) == (MEAN, STD, 88)
    assert video_encoder.AVHUBERT_PIXEL_MEAN is AVHUBERT_PIXEL_MEAN  # imported, not a second copy


def make_item(n_frames=50, audio_extra=123, seed=0, uid="spk/utt"):
    """A synthetic dataset item: a tone plus a little noise, random 96x96 frames."""
    rng = np.random.default_rng(seed)
    n = n_frames * 640 + audio_extra
    t = np.arange(n) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)
    video = rng.integers(1, 256, size=(n_frames, 96, 96), dtype=np.uint8)  # no zero pixels
    return {"audio": torch.from_numpy(audio), "video": torch.from_numpy(video), "text": f"text {uid}", "id": uid}


NOISE = white_noise(3 * 16000, np.random.default_rng(99))


def snr_of(clean: np.ndarray, mixed: np.ndarray) -> float:
    clean = clean.astype(np.float64)
    resid = mixed.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean ** 2) / np.mean(resid ** 2))


# ---------------------------------------------------------------- transforms

@pytest.mark.parametrize("snr", [-5, 0, 5, 10, 15, 20])
def test_train_noise_hits_drawn_snr(snr):
    cfg = AugmentConfig(snrs=(snr,), audio_time_mask=False, video_time_mask=False)
    item = make_item()
    out = TrainTransform(cfg, noise=NOISE)(item, np.random.default_rng(1))
    clean = sync_audio(item["audio"].numpy(), 50)
    assert abs(snr_of(clean, out["audio"].numpy()) - snr) < 0.05


def test_train_clean_snr_leaves_audio_unchanged():
    cfg = AugmentConfig(snrs=(None,), audio_time_mask=False, video_time_mask=False)
    item = make_item()
    out = TrainTransform(cfg, noise=NOISE)(item, np.random.default_rng(1))
    np.testing.assert_array_equal(out["audio"].numpy(), item["audio"].numpy()[:50 * 640])


def test_train_draws_every_snr_from_the_list():
    cfg = AugmentConfig(snrs=(0, 20, None), audio_time_mask=False, video_time_mask=False)
    tf, item = TrainTransform(cfg, noise=NOISE), make_item(n_frames=10)
    clean = sync_audio(item["audio"].numpy(), 10)
    seen = set()
    for k in range(40):
        mixed = tf(item, np.random.default_rng(k))["audio"].numpy()
        seen.add(None if np.array_equal(mixed, clean) else round(snr_of(clean, mixed)))
    assert seen == {0, 20, None}


def test_eval_is_reproducible_and_noisy_at_fixed_snr():
    item = make_item()
    tf = EvalTransform(snr_db=0.0, noise=NOISE, seed=3)
    a, b = tf(item), EvalTransform(snr_db=0.0, noise=NOISE, seed=3)(item, np.random.default_rng(5))
    assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["video"], b["video"])
    clean = sync_audio(item["audio"].numpy(), 50)
    assert abs(snr_of(clean, a["audio"].numpy())) < 0.05  # snr 0 is 0 dB, not a random SNR
    other = EvalTransform(snr_db=0.0, noise=NOISE, seed=3)(dict(item, id="spk/other"))
    assert not torch.equal(a["audio"], other["audio"])  # noise segment depends on the id
    assert stable_seed(3, "spk/utt") == stable_seed(3, "spk/utt") != stable_seed(4, "spk/utt")


def test_eval_clean_centre_crop_and_normalisation():
    item = make_item()
    out = EvalTransform()(item)
    video = item["video"].numpy()
    expected = (video[:, 4:92, 4:92].astype(np.float32) / 255 - MEAN) / STD
    assert out["video"].shape == (50, 88, 88) and out["video"].dtype == torch.float32
    np.testing.assert_allclose(out["video"].numpy(), expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out["audio"].numpy(), item["audio"].numpy()[:50 * 640])
    assert out["text"] == item["text"] and out["id"] == item["id"]


def test_eval_without_noise_refuses_an_snr():
    with pytest.raises(ValueError):
        EvalTransform(snr_db=5.0)


def test_train_random_crop_is_one_window_of_the_frames():
    cfg = AugmentConfig(add_noise=False, audio_time_mask=False, video_time_mask=False)
    item = make_item()
    video = item["video"].numpy().astype(np.float32) / 255
    offsets = set()
    for k in range(6):
        out = TrainTransform(cfg)(item, np.random.default_rng(k))["video"].numpy() * STD + MEAN
        hits = [(t, l) for t in range(9) for l in range(9)
                if np.allclose(out, video[:, t:t + 88, l:l + 88], atol=1e-5)]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 1


@pytest.mark.parametrize("n_frames,extra", [(50, 5000), (50, -3000), (7, 0)])
def test_audio_is_synced_to_video_frames(n_frames, extra):
    item = make_item(n_frames=n_frames, audio_extra=extra)
    for out in (TrainTransform(AugmentConfig(), noise=NOISE)(item, np.random.default_rng(0)), EvalTransform()(item)):
        assert out["audio"].shape == (n_frames * 640,) and out["audio"].dtype == torch.float32
    if extra < 0:
        out = EvalTransform()(item)
        assert torch.all(out["audio"][n_frames * 640 + extra:] == 0)  # zero-padded tail


def zero_runs(mask: np.ndarray) -> list[int]:
    """Lengths of maximal runs of True."""
    runs, n = [], 0
    for m in mask:
        if m:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs + ([n] if n else [])


@pytest.mark.parametrize("seed", range(5))
def test_time_mask_spans_follow_the_window_and_stride(seed):
    for length, window, stride in [(113, 10, 25), (50 * 640, 6400, 16000)]:
        spans = mask_spans(length, window, stride, np.random.default_rng(seed))
        assert len(spans) <= math.ceil(length / stride)
        assert all(0 < e - s < window and 0 <= s and e <= length for s, e in spans)
        x = np.ones(length, dtype=np.float32)
        masked = time_mask(x, window, stride, np.random.default_rng(seed))
        expected = np.ones(length, dtype=bool)
        for s, e in spans:
            expected[s:e] = False
        np.testing.assert_array_equal(masked != 0, expected)


def test_train_masks_video_frames_and_audio_samples():
    cfg = AugmentConfig(add_noise=False, random_crop=False)
    n_frames = 113
    item = make_item(n_frames=n_frames)
    masked_value = (0 - MEAN) / STD  # frames are zeroed before normalisation
    total_video = total_audio = 0
    for k in range(10):
        out = TrainTransform(cfg)(item, np.random.default_rng(k))
        frame_masked = np.all(np.isclose(out["video"].numpy(), masked_value, atol=1e-5), axis=(1, 2))
        runs = zero_runs(frame_masked)
        assert len(runs) <= math.ceil(n_frames / 25) and sum(runs) <= math.ceil(n_frames / 25) * 9
        audio_zero = out["audio"].numpy() == 0
        aruns = zero_runs(audio_zero)
        assert len(aruns) <= math.ceil(n_frames * 640 / 16000)
        assert sum(aruns) <= math.ceil(n_frames * 640 / 16000) * 6399
        total_video += sum(runs)
        total_audio += sum(aruns)
    assert total_video > 0 and total_audio > 0
    off = TrainTransform(AugmentConfig(add_noise=False, audio_time_mask=False, video_time_mask=False))(
        item, np.random.default_rng(0))
    assert not np.any(off["audio"].numpy() == 0)


def test_train_is_a_function_of_the_rng():
    tf, item = TrainTransform(AugmentConfig(), noise=NOISE), make_item()
    a, b = tf(item, np.random.default_rng(7)), tf(item, np.random.default_rng(7))
    assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["video"], b["video"])


# ---------------------------------------------------------------- batching

LENGTHS = np.random.default_rng(0).integers(10, 400, size=97).tolist() + [1500, 30]


def test_packing_respects_the_budget_and_isolates_long_items():
    batches = pack_batches(LENGTHS, 1000)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(LENGTHS)))
    for b in batches:
        total = sum(LENGTHS[i] for i in b)
        assert total <= 1000 or len(b) == 1
    assert [len(LENGTHS) - 2] in batches  # the 1500-frame item alone, no assert


def _padded_reference(lengths, budget):
    """The lip pre-training's former packer: shortest first, (clips + 1) x new clip > budget cuts."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > budget:
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


@pytest.mark.parametrize("budget", [1, 150, 400, 1000, 2000])
def test_packing_by_padded_frames(budget):
    batches = pack_batches(LENGTHS, budget, cost="padded")
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    for b in batches:
        assert len(b) * max(LENGTHS[i] for i in b) <= budget or len(b) == 1
    assert [LENGTHS[i] for b in batches for i in b] == sorted(LENGTHS)  # shortest first: little padding
    assert batches == _padded_reference(LENGTHS, budget)
    assert pack_batches([], budget, cost="padded") == []
    with pytest.raises(ValueError, match="cost"):
        pack_batches(LENGTHS, budget, cost="sum")


def test_sampler_epochs_are_deterministic_complete_and_shuffled():
    s = FrameBudgetBatchSampler(LENGTHS, 1000, shuffle=True, seed=1)
    epochs = []
    for epoch in (0, 1, 0):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)
        assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
        assert all(sum(LENGTHS[i] for i in b) <= 1000 or len(b) == 1 for b in batches)
        epochs.append(batches)
    assert epochs[0] == epochs[2] and epochs[0] != epochs[1]
    again = FrameBudgetBatchSampler(LENGTHS, 1000, shuffle=True, seed=1)
    assert list(again) == epochs[0]
    assert list(FrameBudgetBatchSampler(LENGTHS, 1000, shuffle=False)) == pack_batches(LENGTHS, 1000)


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards_are_disjoint_and_equal(drop_last):
    n_batches = len(pack_batches(LENGTHS, 700))
    shards = []
    for rank in range(2):
        s = FrameBudgetBatchSampler(LENGTHS, 700, seed=5, num_replicas=2, rank=rank, drop_last=drop_last)
        s.set_epoch(3)
        shards.append([tuple(b) for b in s])
        assert len(shards[-1]) == len(s)
    assert len(shards[0]) == len(shards[1])
    union = set(shards[0]) | set(shards[1])
    if n_batches % 2 == 0 or drop_last:
        assert not set(shards[0]) & set(shards[1])
    else:  # one batch repeated to even out the ranks
        assert len(set(shards[0]) & set(shards[1])) <= 1
    expected = n_batches - (n_batches % 2 if drop_last else 0)
    assert len(union) == expected



def test_sampler_resumes_after_the_batches_already_trained():
    full = FrameBudgetBatchSampler(LENGTHS, 700, seed=5, num_replicas=2, rank=1)
    full.set_epoch(2)
    expected = list(full)
    resumed = FrameBudgetBatchSampler(LENGTHS, 700, seed=5, num_replicas=2, rank=1)
    resumed.set_epoch(2)
    resumed.resume_at = 2
    assert list(resumed) == expected[2:]
    assert list(resumed) == expected  # only the resumed pass skips
    resumed.resume_at = 1
    resumed.set_epoch(3)  # a new epoch starts from its beginning
    full.set_epoch(3)
    assert list(resumed) == list(full)


# ---------------------------------------------------------------- collate / dataset

def test_collate_pads_with_zeros_and_reports_lengths():
    tf = TrainTransform(AugmentConfig(), noise=NOISE)
    items = [tf(make_item(n_frames=n, seed=n, uid=f"u{n}"), np.random.default_rng(n)) for n in (30, 12, 21)]
    batch = collate(items)
    assert batch["audio"].shape == (3, 30 * 640) and batch["video"].shape == (3, 30, 88, 88)
    assert batch["audio"].dtype == torch.float32 and batch["video"].dtype == torch.float32
    assert batch["video_lengths"].tolist() == [30, 12, 21]
    assert batch["audio_lengths"].dtype == torch.long
    assert torch.equal(batch["audio_lengths"], batch["video_lengths"] * 640)
    for i, it in enumerate(items):
        t, n = it["video"].shape[0], it["audio"].shape[0]
        assert torch.equal(batch["video"][i, :t], it["video"]) and torch.all(batch["video"][i, t:] == 0)
        assert torch.equal(batch["audio"][i, :n], it["audio"]) and torch.all(batch["audio"][i, n:] == 0)
    assert batch["text"] == [it["text"] for it in items] and batch["ids"] == ["u30", "u12", "u21"]


def test_transformed_dataset_seeds_per_epoch_and_index():
    base = [make_item(n_frames=20, seed=k, uid=f"u{k}") for k in range(3)]
    ds = TransformedDataset(base, TrainTransform(AugmentConfig(), noise=NOISE), seed=11)
    a0, a0_again = ds[1], ds[1]
    ds.set_epoch(1)
    a1 = ds[1]
    assert torch.equal(a0["audio"], a0_again["audio"]) and torch.equal(a0["video"], a0_again["video"])
    assert not torch.equal(a0["audio"], a1["audio"])
    loader = torch.utils.data.DataLoader(ds, batch_sampler=FrameBudgetBatchSampler([20] * 3, 40, seed=0),
                                         collate_fn=collate)
    batches = list(loader)
    assert sorted(i for b in batches for i in b["ids"]) == ["u0", "u1", "u2"]
    assert all(torch.equal(b["audio_lengths"], b["video_lengths"] * 640) for b in batches)


def test_pipeline_on_the_tiny_corpus(tiny_corpus):
    from pathlib import Path

    from avsr.data.batching import frame_lengths
    from avsr.data.dataset import AVDataset
    from avsr.data.media import read_audio

    cfg, _ = tiny_corpus
    root = Path(cfg.out)
    ds = AVDataset(root, root / "labels" / "synth_train.csv")
    aug = AugmentConfig()
    noise = read_audio(root / "noise" / "synth_babble.wav")
    train = TransformedDataset(ds, TrainTransform(aug, noise=noise), seed=0)
    sampler = FrameBudgetBatchSampler(frame_lengths(ds), max_frames=200, seed=0)
    seen = []
    for batch in torch.utils.data.DataLoader(train, batch_sampler=sampler, collate_fn=collate):
        assert batch["video"].shape[2:] == (88, 88)
        assert int(batch["video_lengths"].sum()) <= 200 or len(batch["ids"]) == 1
        assert torch.equal(batch["audio_lengths"], batch["video_lengths"] * 640)
        seen += batch["ids"]
    assert sorted(seen) == sorted(row.id for row in ds.rows)
    ev = EvalTransform(aug, snr_db=5.0, noise=noise, seed=0)
    assert torch.equal(ev(ds[0])["audio"], ev(ds[0])["audio"])
