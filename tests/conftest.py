import contextlib
import io
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from avsr.synth.corpus import SynthConfig, synthesize_corpus
from avsr.synth.text import grid_sentence

# A suite started with `&` from a shell without job control inherits SIGINT ignored, and so would
# every avsr process it starts (an ignored signal stays ignored across exec): the Ctrl-C tests
# (test_interruptions, test_synth_corpus, test_prepare_corpus) need it delivered, as a terminal does.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Lightning's loggers write to the sys.stderr of the moment lightning is first imported. Imported
# first inside a test that captures stderr (capsys, run_cli), they would write to that test's
# stream after it is closed ("--- Logging error ---" in a later test's output): import it here.
import lightning.pytorch  # noqa: E402,F401

# Shared by the model tests (import them with `from conftest import tiny_model, make_batch`).
TEXTS = [grid_sentence(np.random.default_rng(i)) for i in range(300)]


def tiny_model(seed: int = 0, **overrides):
    """An AVSRModel on tiny random backbones (Whisper encoder, lip encoder, 2-layer Llama), in eval mode;
    `overrides` go to AVSRConfig. The same seed gives the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from avsr.backbones.small_lm import train_tokenizer
    from avsr.models.audio_encoder import WhisperAudioEncoder
    from avsr.models.avsr_model import AVSRConfig, AVSRModel
    from avsr.models.video_encoder import VideoEncoder, VideoEncoderConfig

    torch.manual_seed(seed)
    tok = train_tokenizer(TEXTS, 320)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       initializer_range=0.2, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id))
    audio = WhisperAudioEncoder.from_config(d_model=64, encoder_layers=2, encoder_attention_heads=4,
                                            encoder_ffn_dim=128, num_mel_bins=80)
    video = VideoEncoder(VideoEncoderConfig.tiny(embed_dim=64, layers=1))
    cfg = AVSRConfig(projector_hidden=64, lora_rank=4, lora_alpha=8, **overrides)
    return AVSRModel(cfg, audio, video, llm, tok).eval()


def make_batch(lengths: list[int], seed: int = 0) -> dict:
    """Random media with `lengths` video frames (audio 640 samples per frame), zero-padded."""
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    video = torch.zeros(len(lengths), t, 88, 88)
    audio = torch.zeros(len(lengths), t * 640)
    for i, n in enumerate(lengths):
        video[i, :n] = torch.randn(n, 88, 88, generator=g)
        audio[i, : n * 640] = 0.1 * torch.randn(n * 640, generator=g)
    return {"audio": audio, "audio_lengths": torch.tensor(lengths) * 640, "video": video,
            "video_lengths": torch.tensor(lengths), "text": [TEXTS[i] for i in range(len(lengths))]}


def take(batch: dict, i: int) -> dict:
    """Item i of a batch as a batch of one, padding removed."""
    n = int(batch["video_lengths"][i])
    return {"audio": batch["audio"][i : i + 1, : n * 640], "audio_lengths": batch["audio_lengths"][i : i + 1],
            "video": batch["video"][i : i + 1, :n], "video_lengths": batch["video_lengths"][i : i + 1],
            "text": batch["text"][i : i + 1]}


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

    from avsr.backbones.small_lm import SmallLMConfig, train_small_lm
    from avsr.models.video_encoder import VideoEncoderConfig
    from avsr.backbones.lip_ctc import DEFAULT_VOCAB, VideoCTCModel, VideoPretrainConfig, save_pretrained

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
    from avsr.data.manifests import read_manifest

    corpus_cfg, _ = tiny_corpus
    texts = [row.text for row in read_manifest(Path(corpus_cfg.out) / "labels" / "synth_train.csv")]
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
