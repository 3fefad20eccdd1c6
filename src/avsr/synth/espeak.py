"""espeak-ng speech with per-phoneme times, through the C library (ctypes).

The command-line `espeak-ng` prints phonemes but not their times; the library's synth
callback gives both the audio and PHONEME events carrying the sample index at which each
phoneme starts. That alignment is what lets us render lips in sync with the audio, so we
talk to the library directly (no Python binding on PyPI exposes the event list).

espeak-ng keeps global state, so there is one engine per process (see `engine()`). That
state also carries over from one synthesis to the next (the same text comes out a few
samples longer or shorter depending on what was said before), which would make the corpus
depend on the order utterances are made in. So every synthesis runs in a forked child of
a process whose engine has never synthesised: each one starts from the same state.

That process is a small server of its own (`python -m avsr.synth.espeak`, one per process
that synthesises), not the caller: a fork copies the page tables of the process forked and
makes both sides copy every page either writes while the child lives, so forking a corpus
worker (numpy, scipy, PyAV and its arrays: 140 MB) cost more than the synthesis itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pickle
import signal
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

from avsr.errors import AvsrError

LIBRARY = "libespeak-ng.so.1"

# Constants from espeak-ng/speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_PHONEME_IPA = 0x0002
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_PHONEMES_IPA = 0x02  # espeak_TextToPhonemes' phonememode: IPA as UTF-8


class EspeakError(AvsrError):
    """espeak-ng is missing, or refused a voice or a text."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: language voice, optional variant (`m3`, `f2`, ...), prosody."""

    name: str  # e.g. "en-us", "en-gb-x-rp"
    variant: str = ""  # e.g. "m3"; "" for the voice's default
    rate: int = 170  # words per minute
    pitch: int = 50  # 0-99
    pitch_range: int = 50  # 0-99

    @property
    def spec(self) -> str:
        return f"{self.name}+{self.variant}" if self.variant else self.name


@dataclass
class Speech:
    """Synthesised audio with the start time of every phoneme (IPA names)."""

    audio: np.ndarray  # (N,) int16 at `sample_rate`
    sample_rate: int
    phonemes: list[tuple[str, float]]  # (IPA name, start in seconds); "" marks a pause


class Engine:
    """One espeak-ng instance (the library is a per-process singleton)."""

    def __init__(self) -> None:
        # AVSR_ESPEAK_LIBRARY names another build of the library (or a missing one, in tests).
        path = os.environ.get("AVSR_ESPEAK_LIBRARY") or ctypes.util.find_library("espeak-ng") or LIBRARY
        try:
            self._lib = ctypes.CDLL(path)
        except OSError as err:
            raise EspeakError(
                f"cannot load the espeak-ng library ({LIBRARY}): {err}. Install the Debian package "
                "'espeak-ng' (scripts/setup.sh does this)."
            ) from None
        lib = self._lib
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        self.sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA
        )
        if self.sample_rate <= 0:
            raise EspeakError("espeak_Initialize failed: is the espeak-ng-data folder installed?")
        data_path = ctypes.c_char_p()
        lib.espeak_Info(ctypes.byref(data_path))
        self.data_path = (data_path.value or b"").decode()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._callback = _Callback(self._on_synth)  # keep a reference: ctypes does not
        lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav, n_samples, events) -> int:
        if wav and n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                name = bytes(events[i].id.string).split(b"\0")[0].decode("utf-8", "replace")
                self._events.append((name, events[i].sample))
            i += 1
        return 0

    def variants(self) -> list[str]:
        """Names of the voice variants installed (the `+m3` part of a voice spec)."""
        folder = os.path.join(self.data_path, "voices", "!v")
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []

    def check_voice(self, voice: Voice) -> None:
        """Raise EspeakError naming the voice if espeak-ng does not know it."""
        self._in_child(self._set_voice, voice)

    def synthesize(self, text: str, voice: Voice) -> Speech:
        audio, events = self._in_child(self._synthesize_here, text, voice)
        phonemes = [(name, sample / self.sample_rate) for name, sample in events]
        return Speech(audio=audio, sample_rate=self.sample_rate, phonemes=phonemes)

    def phonemize(self, text: str, voice: Voice) -> str:
        """The IPA phonemes of `text` in `voice` (stress marks, a space between words, ", "
        between clauses): what a neural voice (avsr.synth.neural) reads."""
        return self._in_child(self._phonemize_here, text, voice)

    def _phonemize_here(self, text: str, voice: Voice) -> str:
        self._set_voice(voice)
        buffer = ctypes.create_string_buffer(text.encode("utf-8"))
        cursor = ctypes.c_void_p(ctypes.addressof(buffer))  # the library advances it clause by clause
        clauses = []
        while cursor.value:
            clause = self._lib.espeak_TextToPhonemes(ctypes.byref(cursor), _CHARS_UTF8, _PHONEMES_IPA)
            clauses.append((clause or b"").decode("utf-8", "replace").strip())
        return ", ".join(c for c in clauses if c)

    def _set_voice(self, voice: Voice) -> None:
        # espeak-ng silently ignores an unknown variant, so look it up ourselves.
        if voice.variant and voice.variant not in self.variants():
            raise EspeakError(f"unknown espeak-ng voice variant {voice.variant!r} in {voice.spec!r}")
        if self._lib.espeak_SetVoiceByName(voice.spec.encode()) != 0:
            raise EspeakError(f"unknown espeak-ng voice {voice.spec!r} (try en, en-us, en-gb-x-rp, ...)")

    def _synthesize_here(self, text: str, voice: Voice) -> tuple[np.ndarray, list[tuple[str, int]]]:
        self._set_voice(voice)
        for param, value in ((_PARAM_RATE, voice.rate), (_PARAM_PITCH, voice.pitch), (_PARAM_RANGE, voice.pitch_range)):
            self._lib.espeak_SetParameter(param, int(value), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8")
        if self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
            raise EspeakError(f"espeak-ng could not synthesise {text!r}")
        self._lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio.astype(np.int16), self._events

    def _in_child(self, fn, *args):
        """Run fn(*args) in a forked child so this process's espeak state never changes."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: run, send (ok, result) back, exit without cleanup handlers
            os.close(read_fd)
            try:
                try:
                    payload = (True, fn(*args))
                except EspeakError as err:
                    payload = (False, str(err))
                with os.fdopen(write_fd, "wb") as pipe:
                    pickle.dump(payload, pipe)
            finally:
                os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        if not data:
            raise EspeakError(f"espeak-ng crashed (child exit status {status}) on {args!r}")
        ok, result = pickle.loads(data)
        if not ok:
            raise EspeakError(result)
        return result


class EngineProcess:
    """The engine as used everywhere: an `Engine` in a small server process (see the module
    docstring), asked one request at a time over pipes; `Engine`'s check_voice, phonemize and synthesize."""

    def __init__(self) -> None:
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
        self._server = subprocess.Popen([sys.executable, "-m", "avsr.synth.espeak"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": path})
        self.sample_rate = self._call(None)

    @property
    def alive(self) -> bool:
        return self._server.poll() is None

    def _stop(self) -> None:
        self._server.kill()
        self._server.wait()

    def _call(self, name: str | None, *args):
        """Send one request (None: only read the server's greeting) and return its result."""
        try:
            if name is not None:
                pickle.dump((name, args), self._server.stdin)
                self._server.stdin.flush()
            ok, result = pickle.load(self._server.stdout)
        except (EOFError, OSError, pickle.UnpicklingError):
            self._stop()
            raise EspeakError(f"the espeak-ng server exited (status {self._server.returncode})") from None
        except BaseException:  # interrupted: the replies would be out of step with the requests
            self._stop()
            raise
        if not ok:
            raise EspeakError(result)
        return result

    def check_voice(self, voice: Voice) -> None:
        self._call("check_voice", voice)

    def phonemize(self, text: str, voice: Voice) -> str:
        return self._call("phonemize", text, voice)

    def synthesize(self, text: str, voice: Voice) -> Speech:
        audio, phonemes = self._call("synthesize", text, voice)
        return Speech(audio=audio, sample_rate=self.sample_rate, phonemes=phonemes)


def serve(requests, replies) -> None:
    """The server's loop: (method name, args) in, (ok, result or message) out, until EOF (or a
    broken pipe: the client is gone either way).
    Results are plain data (this module runs as __main__ here, so its classes do not pickle)."""
    def reply(ok: bool, result) -> None:
        pickle.dump((ok, result), replies)
        replies.flush()

    try:
        eng = Engine()
    except EspeakError as err:
        return reply(False, str(err))
    reply(True, eng.sample_rate)
    while True:
        try:
            name, args = pickle.load(requests)
        except EOFError:  # the client is gone
            return
        try:
            result = getattr(eng, name)(*args)
            reply(True, (result.audio, result.phonemes) if isinstance(result, Speech) else result)
        except EspeakError as err:
            reply(False, str(err))


_ENGINES: dict[int, EngineProcess] = {}


def engine() -> EngineProcess:
    """This process's espeak-ng engine, started on first use. Keyed by process id: a forked
    worker starts its own (a server answers one client, over its pipes)."""
    pid = os.getpid()
    if pid not in _ENGINES or not _ENGINES[pid].alive:
        _ENGINES[pid] = EngineProcess()
    return _ENGINES[pid]


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the server and its forked child end at once and say
    # nothing (the default action, no KeyboardInterrupt traceback); the avsr command that started
    # them reports the interruption, once.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything the library prints goes to stderr, not into the replies
    try:
        serve(sys.stdin.buffer, replies)
    except BrokenPipeError:  # the client went away before reading a reply (it was interrupted and
        os._exit(0)          # reports that itself); _exit: the unsent reply is not flushed again
