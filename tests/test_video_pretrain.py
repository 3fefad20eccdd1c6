"""CTC pre-training of the video encoder: it learns, it saves/loads exactly, greedy decoding is right."""

import json
from pathlib import Path

import torch

from avsr.backbones.lip_ctc import (CharTokenizer, VideoCTCModel, VideoPretrainConfig, collate, error_rates,
                                    greedy_ctc_decode, load_clips, load_video_ctc_model, save_pretrained, train_ctc)
from avsr.models.video_encoder import VideoEncoder, VideoEncoderConfig, load_video_encoder


def _tiny_cfg(**overrides) -> VideoPretrainConfig:
    # Small enough for ~30 s on 2 cores: narrow front end, smaller crop, short clips batches.
    enc = VideoEncoderConfig.tiny(frontend_channels=8, resnet_channels=(8, 16, 32, 32), resnet_blocks=(1, 1, 1, 1),
                                  embed_dim=64, layers=1, heads=2, ffn_dim=128, conv_pos=4, conv_pos_groups=2)
    settings = dict(encoder=enc, steps=40, batch_frames=400, lr=3e-3, warmup_steps=5, crop=48, log_every=10,
                    seed=0, threads=2)
    settings.update(overrides)
    return VideoPretrainConfig(**settings)


def test_greedy_ctc_decode_collapses_repeats_and_drops_blanks():
    vocab = 5
    # Frame-wise best ids: a a _ a b b _ _ c | padded frames (ignored via lengths)
    path = [1, 1, 0, 1, 2, 2, 0, 0, 3, 4, 4]
    logits = torch.full((1, len(path), vocab), -5.0)
    logits[0, torch.arange(len(path)), torch.tensor(path)] = 5.0
    assert greedy_ctc_decode(logits, torch.tensor([9])) == [[1, 1, 2, 3]]  # blank separates the repeated a
    assert greedy_ctc_decode(logits) == [[1, 1, 2, 3, 4]]
    tok = CharTokenizer()
    assert tok.decode(tok.encode("Bin  Blue at F 2 now")) == "bin blue at f 2 now"
    assert error_rates(["bin blue"], ["bin blew"]) == (2 / 8, 1 / 2)


def test_pretrain_learns_and_round_trips(tiny_corpus, tmp_path):
    synth_cfg, _ = tiny_corpus
    root = Path(synth_cfg.out)
    cfg = _tiny_cfg()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(2)
    tok = CharTokenizer(cfg.vocab)
    clips = load_clips(root, root / "labels" / "synth_train.csv", tok)
    model = VideoCTCModel(cfg.encoder, len(cfg.vocab))
    report = train_ctc(model, clips, cfg, log=lambda *_: None)
    initial = sum(report["loss_history"][:3]) / 3
    final = sum(report["loss_history"][-5:]) / 5
    assert final < 0.7 * initial, report["loss_history"]
    assert isinstance(model.encoder.feature_extractor_video.resnet.frontend3D[0], torch.nn.Conv3d)

    out = save_pretrained(model, cfg, report, tmp_path / "video_enc")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    config = json.loads((out / "config.json").read_text())
    assert config["vocab"][0] == "<blank>" and config["report"]["steps"] == cfg.steps

    loaded = load_video_encoder(out)
    assert isinstance(loaded, VideoEncoder) and not loaded.training
    val = load_clips(root, root / "labels" / "synth_val.csv", tok)
    video, lengths, _, _ = collate(val, cfg, None)  # (B, T, 48, 48), centre crop
    model.eval()
    with torch.no_grad():
        want, want_mask = model.encoder(video, lengths)
        got, got_mask = loaded(video, lengths)
    assert got.dtype == torch.float32 and torch.equal(got_mask, want_mask)
    assert (got - want).abs().max().item() == 0.0

    ctc_model, _ = load_video_ctc_model(out)
    with torch.no_grad():
        assert torch.equal(ctc_model(video, lengths)[0], model(video, lengths)[0])


def test_encoder_folder_marker_decides_complete_and_ours(tmp_path):
    import pytest

    from avsr.backbones.lip_ctc import DEFAULT_VOCAB, FOLDER, is_complete
    from avsr.errors import AvsrError

    cfg = _tiny_cfg()
    foreign = tmp_path / "hf"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "llama"}))  # another format's config.json
    assert not is_complete(foreign) and not is_complete(tmp_path / "absent")
    with pytest.raises(AvsrError, match="not a pretrained video encoder folder"):
        FOLDER.check_replaceable(foreign)
    out = save_pretrained(VideoCTCModel(cfg.encoder, len(DEFAULT_VOCAB)), cfg, {}, tmp_path / "enc")
    assert is_complete(out)
    FOLDER.check_replaceable(out)  # ours: may be replaced
    with pytest.raises(RuntimeError, match="config.json was not written"):
        with FOLDER.writing(tmp_path / "half") as tmp:
            (tmp / "model.safetensors").write_bytes(b"")
    assert not (tmp_path / "half").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
