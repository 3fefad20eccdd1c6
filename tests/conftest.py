import contextlib
import io
from pathlib import Path

import pytest
import torch

from avsr.synth.corpus import SynthConfig, synthesize_corpus


def tiny_config(out, **overrides) -> SynthConfig:
    """A corpus small enough for tests (a few seconds), with every split and the noise."""
    settings = dict(out=str(out), seed=7, utterances={"train": 12, "val": 4, "test": 6},
                    speakers={"train": 4, "val": 2, "test": 3}, noise_speakers=3, noise_seconds=4.0, workers=2)
    settings.update(overrides)
    return SynthConfig(**settings)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """(config, summary) of a tiny corpus generated once per test session."""
    cfg = tiny_config(tmp_path_factory.mktemp("corpus"))
    summary = synthesize_corpus(cfg, progress=False)
    return cfg, summary


def save_tiny_backbones(folder: Path, texts: list[str]) -> dict[str, Path]:
    """Tiny Whisper, lip encoder and LM folders in the formats `build_model` reads."""
    from transformers import WhisperConfig, WhisperModel

    from avsr.models.small_lm import SmallLMConfig, train_small_lm
    from avsr.models.video_encoder import VideoEncoderConfig
    from avsr.models.video_pretrain import DEFAULT_VOCAB, VideoCTCModel, VideoPretrainConfig, save_pretrained

    torch.manual_seed(0)
    paths = {"audio": folder / "whisper", "video": folder / "lips", "llm": folder / "lm"}
    WhisperModel(WhisperConfig(d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                               decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                               num_mel_bins=80)).save_pretrained(paths["audio"])
    encoder = VideoEncoderConfig.tiny(embed_dim=64, layers=1)
    save_pretrained(VideoCTCModel(encoder, len(DEFAULT_VOCAB)), VideoPretrainConfig(encoder=encoder), {},
                    paths["video"])
    train_small_lm(texts, paths["llm"], SmallLMConfig(hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                                                      steps=2, batch_size=4, warmup_steps=1, num_threads=1))
    return paths


@pytest.fixture(scope="session")
def tiny_backbones(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """Tiny Whisper, lip-encoder and LM folders for training through the CLI."""
    from avsr.data.dataset import read_labels

    corpus_cfg, _ = tiny_corpus
    texts = [row.text for row in read_labels(Path(corpus_cfg.out) / "labels" / "synth_train.csv")]
    return save_tiny_backbones(tmp_path_factory.mktemp("backbones"), texts)


def tiny_train_args(corpus_root, backbones: dict, out, steps: int = 2, *extra: str) -> list[str]:
    """`avsr train` arguments for a few steps on the tiny corpus and backbones."""
    return [f"model.llm={backbones['llm']}", f"model.audio_encoder={backbones['audio']}",
            f"model.video_encoder={backbones['video']}", "model.projector_hidden=32", "model.lora_rank=4",
            f"data.root={corpus_root}", "data.max_frames=150", "data.feature_cache_copies=0", f"out={out}",
            f"optim.max_steps={steps}", "optim.warmup_steps=1", "log_every=1", "val_every=0",
            f"checkpoint_every={steps}", "accelerator=cpu", *extra]


@pytest.fixture(scope="session")
def tiny_run(tiny_corpus, tiny_backbones, tmp_path_factory) -> Path:
    """The run folder of a 2-step training on the tiny corpus (its checkpoint: checkpoints/last)."""
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    code, _, err = run_cli("train", "--quiet", *tiny_train_args(tiny_corpus[0].out, tiny_backbones, out))
    assert code == 0, err
    return out


def run_cli(*argv: str) -> tuple[int, str, str]:
    """`avsr ARGV...` in this process: (exit code, stdout, stderr). An exception that escapes
    `avsr.cli.main` propagates, as a traceback would end the real command."""
    from avsr.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse errors
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()
