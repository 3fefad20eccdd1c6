"""Read official AV-HuBERT fairseq checkpoints (`*.pt`) without fairseq, and without trusting them.

A fairseq `.pt` is a `torch.save` pickle, and a pickle can name any Python callable and have it
run while loading. These files also name fairseq, sentencepiece, argparse and numpy classes that
are not (or need not be) installed here. So the file is read in two steps:

1. Scan: every global the pickle names is read from its opcodes (nothing is built yet). One that
   is not on the allow-list refuses the file, with every such name in the message.
2. Load: `torch.load` with a pickle module whose `find_class` hands out only allow-listed objects
   (the enforcement; the scan only makes the message complete and early).

The allow-list (`ALLOWED_GLOBALS`) has two parts:

* real objects that can only build data: torch's tensor rebuild helper (`_rebuild_tensor_v2`,
  and `_rebuild_parameter` for files saved with Parameters), `collections.OrderedDict` (state
  dicts and every tensor's hook table), and the builtin types protocol 2 pickles through a
  global: set, frozenset, bytearray, complex, and bytes (via `_codecs.encode`, replaced here by
  a latin-1-only function). Storage types (`torch.FloatStorage`, ...) are resolved by torch
  itself into dtype tags and are allowed by the scan only under module `torch`;
* inert stand-ins (`Inert`): the fairseq `Dictionary` and `SentencepieceBPE` of `task_state`,
  sentencepiece's `SentencePieceProcessor` (pickled as its model bytes), `argparse.Namespace`
  (older `args` / `w2v_args`), and numpy's scalar / array / dtype reconstructors (numbers in
  `extra_state` and optimizer history, under both `numpy.core` and numpy 2's `numpy._core`). A
  stand-in only stores what the pickle hands it and runs nothing; none of it is used except the
  fields of a `Namespace`.

Anything else, e.g. `os.system`, `builtins.eval`, `subprocess.Popen`, an OmegaConf object, is
refused. Only `torch.save`'s zip format is read (its default since torch 1.6, 2020; the AV-HuBERT
releases are from 2022); TorchScript archives are refused.

What the file holds (docs/avhubert.md; key names in `avsr.models.video_encoder`'s docstring):
a trainer state `{"cfg", "model", "task_state", ...}` of a pre-trained (`av_hubert`) or fine-tuned
(`av_hubert_seq2seq` / `av_hubert_ctc`, encoder under `encoder.w2v_model.` /
`w2v_encoder.w2v_model.`, pre-training config in `cfg.model.w2v_args`) model, or a bare state
dict ("weights only"), whose config is then read from tensor shapes. Every tensor is either
mapped onto the encoder or dropped by a documented rule (`DROP_RULES`); the rest is reported.

The weights are Meta's, under the AV-HuBERT licence (`AVHUBERT_LICENCE`): research only,
non-commercial, no surveillance or biometric processing. The notice is printed on every load.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import sys
import types
import zipfile
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from avsr.errors import AvsrError

AVHUBERT_LICENCE = (
    "AV-HuBERT weights are Meta's, under the AV-HuBERT License Agreement "
    "(https://github.com/facebookresearch/av_hubert/blob/main/LICENSE): non-commercial research use "
    "only; no commercial or production use, no military use, no surveillance and no biometric "
    "processing. AV-HuBERT is licensed under the AV-HuBERT license, Copyright (c) Meta Platforms, "
    "Inc. All Rights Reserved.")

#: config.json "source" of an encoder folder converted from such a file (the notice follows it).
FOLDER_SOURCE = "fairseq-avhubert"

MODEL_NAMES = {"av_hubert": "pre-trained", "av_hubert_seq2seq": "fine-tuned", "av_hubert_ctc": "fine-tuned"}

#: Where the encoder sits in a fine-tuned model, and what else that model has (not the encoder).
FINETUNED_LAYOUTS = (("encoder.w2v_model.", ("decoder.",)),  # AVHubertSeq2Seq: + the seq2seq decoder
                     ("w2v_encoder.w2v_model.", ("w2v_encoder.proj.",)))  # AVHubertCtc: + the CTC head

#: Encoder tensors not used by the video-only encoder (names after the fine-tuned prefix).
DROP_RULES = (
    ("feature_extractor_audio.", "audio front end: the video-only path feeds zeros after it"),
    ("mask_emb", "input masking (pre-training only)"),
    ("final_proj.", "pre-training head"),
    ("label_embs_concat", "pre-training head"),
    ("target_glu.", "pre-training head"),
)

#: Newer torch saves weight-normed convs as parametrizations; our names are fairseq's.
_RENAMES = {"encoder.pos_conv.0.parametrizations.weight.original0": "encoder.pos_conv.0.weight_g",
            "encoder.pos_conv.0.parametrizations.weight.original1": "encoder.pos_conv.0.weight_v"}

# VideoEncoderConfig field -> AV-HuBERT model cfg key (the pre-training config of the encoder).
_ARCH_FIELDS = {"embed_dim": "encoder_embed_dim", "layers": "encoder_layers", "heads": "encoder_attention_heads",
                "ffn_dim": "encoder_ffn_embed_dim", "layer_norm_first": "layer_norm_first", "conv_pos": "conv_pos",
                "conv_pos_groups": "conv_pos_groups", "relu_type": "resnet_relu_type",
                "modality_fuse": "modality_fuse", "audio_feat_dim": "audio_feat_dim"}
# Regularisation: a fine-tuned model overrides its encoder's values with its own (other names).
_PRETRAIN_REGULARISATION = {"dropout": "dropout", "attention_dropout": "attention_dropout",
                            "activation_dropout": "activation_dropout", "dropout_input": "dropout_input",
                            "layerdrop": "encoder_layerdrop"}
_FINETUNE_REGULARISATION = {**_PRETRAIN_REGULARISATION, "layerdrop": "layerdrop"}
_FIELD_TYPES = {"embed_dim": int, "layers": int, "heads": int, "ffn_dim": int, "conv_pos": int,
                "conv_pos_groups": int, "audio_feat_dim": int, "layer_norm_first": bool, "relu_type": str,
                "modality_fuse": str, **{k: float for k in _PRETRAIN_REGULARISATION}}
_HEADS_BY_WIDTH = {768: 12, 1024: 16}  # AV-HuBERT Base / Large


class CheckpointFormatError(AvsrError):
    """A fairseq checkpoint that cannot be read safely or does not fit the video encoder."""


def print_licence_notice() -> None:
    """Say, on stderr, under which terms the AV-HuBERT weights just loaded may be used."""
    print(f"avsr: note: {AVHUBERT_LICENCE}", file=sys.stderr)


# --------------------------------------------------------------------------- safe unpickling


class Inert:
    """Stands in for a class a checkpoint names: keeps what the pickle hands it, runs nothing.

    Built either by a call (REDUCE: numpy's reconstructors) or by `__new__` + `__setstate__`
    (NEWOBJ + BUILD: plain classes; SentencePieceProcessor's state is its model as bytes).
    """

    qualified_name = "?"
    args: tuple = ()
    state: object = None

    def __init__(self, *args, **kwargs) -> None:
        self.args = args

    def __setstate__(self, state) -> None:
        self.state = state

    def fields(self) -> dict:
        """The instance attributes it was pickled with (an argparse.Namespace's settings)."""
        return self.state if isinstance(self.state, dict) else {}

    def __repr__(self) -> str:
        return f"<inert {self.qualified_name}>"


def _stand_in(qualified_name: str) -> type[Inert]:
    return type(qualified_name.rsplit(".", 1)[1], (Inert,), {"qualified_name": qualified_name})


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """What `_codecs.encode` does for protocol-2 bytes, and nothing else."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} (only latin1 builds bytes)")
    return text.encode("latin1")


_INERT_NAMES = (
    "fairseq.data.dictionary.Dictionary",
    "fairseq.data.encoders.sentencepiece_bpe.SentencepieceBPE",
    "sentencepiece.SentencePieceProcessor",
    "argparse.Namespace",
    "numpy.dtype",
    "numpy.ndarray",
    *(f"numpy.{core}.multiarray.{name}" for core in ("core", "_core") for name in ("scalar", "_reconstruct")),
)

ALLOWED_GLOBALS: dict[str, object] = {
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.bytearray": bytearray,
    "builtins.complex": complex,
    "_codecs.encode": _latin1_bytes,
    **{name: _stand_in(name) for name in _INERT_NAMES},
}
# Storage types only tag a tensor's dtype; torch resolves them itself before find_class is asked.
_STORAGE_NAMES = {f"torch.{name}" for name in torch.storage._dtype_to_storage_type_map().values()}


def _qualified(module: str, name: str) -> str:
    # Protocol 2 writes Python 2's module name for builtins.
    return f"{'builtins' if module == '__builtin__' else module}.{name}"


class _Refused(Exception):
    def __init__(self, names: list[str]) -> None:
        super().__init__(", ".join(names))
        self.names = names


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        qualified = _qualified(module, name)
        if qualified not in ALLOWED_GLOBALS:
            raise _Refused([qualified])
        return ALLOWED_GLOBALS[qualified]


# What torch.load needs of a pickle module (`__name__` is checked for dill).
_PICKLE_MODULE = types.SimpleNamespace(__name__="avsr.allow_list_pickle", Unpickler=_AllowListUnpickler)

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_GET_OPS = {"BINGET", "LONG_BINGET", "GET"}
_PUT_OPS = {"BINPUT", "LONG_BINPUT", "PUT"}


def pickle_globals(data: bytes) -> list[str]:
    """Every global a pickle names, in order, read from its opcodes without building anything.

    GLOBAL carries "module name"; STACK_GLOBAL (protocol 4+) takes the two strings pushed just
    before it (written as strings or fetched from the memo). A name that cannot be read this way
    comes back as "<unreadable>", which no allow-list holds.
    """
    found: list[str] = []
    pushed: deque = deque([None, None], maxlen=2)  # what the last two pushing opcodes pushed: a string or None
    memo: dict[int, object] = {}
    for op, arg, _ in pickletools.genops(data):
        value = None
        if op.name in ("GLOBAL", "INST"):
            module, name = arg.split(" ", 1)
            found.append(_qualified(module, name))
        elif op.name == "STACK_GLOBAL":
            module, name = pushed
            found.append(_qualified(module, name) if isinstance(module, str) and isinstance(name, str)
                         else "<unreadable>")
        elif op.name in ("MEMOIZE", *_PUT_OPS):  # stores the top of the stack, pushes nothing
            memo[len(memo) if op.name == "MEMOIZE" else arg] = pushed[-1]
            continue
        elif op.name in _STRING_OPS:
            value = arg
        elif op.name in _GET_OPS:
            value = memo.get(arg)
        elif not op.stack_after:
            continue
        pushed.append(value)
    return found


def torch_zip_pickle(path: Path, error: type[Exception], not_torch: str, what: str) -> bytes:
    """The one data.pkl of a torch.save zip archive at `path`, read without unpickling (so its
    globals can be checked first); `error(message)` names the file when it is missing, not such
    an archive (`not_torch`), or a TorchScript archive rather than `what`."""
    if not path.is_file():
        raise error(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
            if any(n.endswith("/constants.pkl") for n in names):
                raise error(f"{path}: a TorchScript archive, not {what}")
            if len(pickles) != 1:
                raise error(not_torch)
            return archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise error(f"{not_torch} ({err})") from None


def load_checkpoint_object(path: str | Path) -> object:
    """What `torch.save` wrote to `path`, unpickled through the allow-list (tensors on the CPU,
    memory-mapped from the file)."""
    path = Path(path)
    data = torch_zip_pickle(path, CheckpointFormatError, (
        f"{path}: not a PyTorch checkpoint in torch.save's zip format (that of fairseq's .pt files since torch "
        f"1.6; older formats and plain pickles are not read)"), "a fairseq checkpoint")
    try:
        refused = sorted({g for g in pickle_globals(data) if g not in ALLOWED_GLOBALS and g not in _STORAGE_NAMES})
    except ValueError as err:  # pickletools: an opcode that is not one
        raise CheckpointFormatError(f"{path}: damaged pickle ({err})") from None
    try:
        if refused:
            raise _Refused(refused)
        return torch.load(path, map_location="cpu", pickle_module=_PICKLE_MODULE, weights_only=False, mmap=True)
    except _Refused as err:
        raise CheckpointFormatError(
            f"{path}: refused: its pickle references {', '.join(err.names)}, not on the allow-list of what "
            f"AV-HuBERT checkpoints hold (a pickle can run code; nothing from the file was run)") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, KeyError, AttributeError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointFormatError(f"{path}: cannot read the checkpoint: {first_line}") from None


# --------------------------------------------------------------------------- the file's layout


@dataclass
class EncoderWeights:
    """The encoder part of a fairseq AV-HuBERT file, in our names, before the shape check."""

    tensors: dict[str, torch.Tensor]  # our name -> tensor as stored (dtype kept, memory-mapped)
    file_names: dict[str, str]  # our name -> its name in the file
    prefix: str  # where the encoder sits in the file: "" (pre-trained) or a fine-tuned prefix
    unexpected: dict[str, object]  # file name -> value, neither mapped nor dropped by a rule
    dropped: list[str]  # file names dropped by a rule
    fields: dict  # VideoEncoderConfig fields
    info: dict


def _usable(value, kind: type):
    """`value` when it has the field's type; None for a missing key, an unresolved "${...}"
    interpolation or anything else."""
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is str:
        ok = isinstance(value, str) and not value.startswith("${")
    else:
        ok = isinstance(value, kind)
    return value if ok else None


def _settings(value) -> dict:
    """A cfg section as a dict: a plain dict, or an argparse.Namespace's fields."""
    if isinstance(value, Inert):
        return value.fields()
    return dict(value) if isinstance(value, Mapping) else {}


def _split_checkpoint(obj: object, path: Path) -> tuple[Mapping, dict | None]:
    """(model state dict, model cfg or None) of a trainer state or of a bare state dict."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        cfg = _settings(obj.get("cfg"))
        if cfg.get("model") is not None:
            return obj["model"], _settings(cfg["model"])
        args = _settings(obj.get("args"))  # fairseq before Hydra: one flat argparse.Namespace
        return obj["model"], ({**args, "_name": args.get("arch")} if args else None)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    raise CheckpointFormatError(f"{path}: holds no model state dict (expected fairseq's {{'cfg', 'model', ...}} "
                                f"or a dict of tensors), got {type(obj).__name__}")


# Fields the tensor shapes tell; heads (by width), layer_norm_first (True in every release) and
# audio_feat_dim (documentation only) are not among them.
_SHAPE_FIELDS = ("embed_dim", "modality_fuse", "relu_type", "layers", "ffn_dim", "conv_pos", "conv_pos_groups")


def _shape_fields(tensors: dict[str, torch.Tensor], path: Path) -> dict:
    """The VideoEncoderConfig fields read from tensor shapes (for a file without a usable cfg)."""
    proj = tensors.get("post_extract_proj.weight")  # (D, 2D)
    if proj is None or proj.dim() != 2:
        raise CheckpointFormatError(f"{path}: no usable cfg in the file and no post_extract_proj.weight to read "
                                    f"the encoder width from; use a checkpoint that still has its cfg")
    dim = proj.shape[0]
    # post_extract_proj exists only with "concat" fusion (2D -> D); a wrong width is a shape error later.
    fields = {"embed_dim": dim, "modality_fuse": "concat",
              "relu_type": "prelu" if "feature_extractor_video.resnet.frontend3D.2.weight" in tensors else "relu"}
    layers = [int(m.group(1)) for k in tensors if (m := re.match(r"encoder\.layers\.(\d+)\.", k))]
    if layers:
        fields["layers"] = max(layers) + 1
    if (fc1 := tensors.get("encoder.layers.0.fc1.weight")) is not None:
        fields["ffn_dim"] = fc1.shape[0]  # (F, D)
    if (pos := tensors.get("encoder.pos_conv.0.weight_v")) is not None and pos.dim() == 3 and pos.shape[1]:
        fields["conv_pos"], fields["conv_pos_groups"] = pos.shape[2], dim // pos.shape[1]  # (D, D / groups, K)
    # The ResNet front end (64 / 64-128-256-512, two blocks a stage, in every release; read anyway)
    trunk = "feature_extractor_video.resnet.trunk."
    if (stem := tensors.get("feature_extractor_video.resnet.frontend3D.0.weight")) is not None:
        fields["frontend_channels"] = stem.shape[0]  # (C0, 1, 5, 7, 7)
    stages = sorted({int(m.group(1)) for k in tensors if (m := re.match(re.escape(trunk) + r"layer(\d+)\.0\.conv1\.", k))})
    if stages and stages == list(range(1, len(stages) + 1)):
        fields["resnet_channels"] = tuple(tensors[f"{trunk}layer{i}.0.conv1.weight"].shape[0] for i in stages)
        fields["resnet_blocks"] = tuple(1 + max(int(m.group(1)) for k in tensors
                                                if (m := re.match(re.escape(trunk) + rf"layer{i}\.(\d+)\.", k)))
                                        for i in stages)
    return fields


def _config_fields(tensors: dict, audio_dim: int | None, model_cfg: dict | None, path: Path) -> tuple[dict, str]:
    """VideoEncoderConfig fields from the encoder's cfg (fine-tuned: its `w2v_args`), gaps filled
    from tensor shapes, and where they came from."""
    finetuned = model_cfg is not None and MODEL_NAMES.get(model_cfg.get("_name")) == "fine-tuned"
    arch = _settings(model_cfg.get("w2v_args")) if finetuned else (model_cfg or {})
    arch = _settings(arch.get("model")) or arch  # w2v_args: a whole trainer cfg, or flat Namespace settings
    if _usable(arch.get("sub_encoder_layers"), int):
        raise CheckpointFormatError(f"{path}: sub_encoder_layers = {arch['sub_encoder_layers']} (per-modality "
                                    f"transformers) is not supported by the video encoder")
    if _usable(arch.get("activation_fn"), str) not in (None, "gelu"):
        raise CheckpointFormatError(f"{path}: activation_fn = {arch['activation_fn']!r}; the video encoder uses gelu")

    fields = {f: v for f, key in _ARCH_FIELDS.items() if (v := _usable(arch.get(key), _FIELD_TYPES[f])) is not None}
    from_cfg = set(fields)
    if any(f not in fields for f in _SHAPE_FIELDS):
        fields = {**_shape_fields(tensors, path), **fields}
    if "audio_feat_dim" not in fields and audio_dim is not None:
        fields["audio_feat_dim"] = audio_dim
    if "heads" not in fields:
        dim = fields["embed_dim"]
        if dim not in _HEADS_BY_WIDTH:
            raise CheckpointFormatError(f"{path}: the file does not say how many attention heads its D={dim} "
                                        f"encoder has (known: 768 -> 12, 1024 -> 16); use a checkpoint with its cfg")
        fields["heads"] = _HEADS_BY_WIDTH[dim]
    # Dropout and LayerDrop (train mode only): a fine-tuned model sets its encoder's own.
    regularisation, table = (model_cfg, _FINETUNE_REGULARISATION) if finetuned else (arch, _PRETRAIN_REGULARISATION)
    fields.update({f: float(v) for f, key in table.items() if (v := _usable(regularisation.get(key), float)) is not None})
    return fields, "cfg" if from_cfg == set(_ARCH_FIELDS) else "cfg and tensor shapes" if from_cfg else "tensor shapes"


def read_encoder_weights(path: str | Path) -> EncoderWeights:
    """The encoder tensors of an AV-HuBERT fairseq file (unpickled through the allow-list) in our
    names, what was dropped by rule, what is unexpected, and the config the file gives."""
    path = Path(path)
    state, model_cfg = _split_checkpoint(load_checkpoint_object(path), path)
    return encoder_weights(state, model_cfg, path)


def encoder_weights(state: Mapping, model_cfg: dict | None, path: str | Path) -> EncoderWeights:
    """`read_encoder_weights` of a state dict already in memory (e.g. the `video_encoder.` part of
    a Llama-AVSR checkpoint); `path` names it in messages."""
    name = model_cfg.get("_name") if model_cfg else None
    if name is not None and name not in MODEL_NAMES:
        raise CheckpointFormatError(f"{path}: a {name!r} checkpoint, not AV-HuBERT "
                                    f"(expected cfg.model._name to be one of {', '.join(MODEL_NAMES)})")
    prefix, outside = "", ()
    for layout in FINETUNED_LAYOUTS:
        if any(k.startswith(layout[0]) for k in state):
            prefix, outside = layout
    if not prefix and MODEL_NAMES.get(name) == "fine-tuned":  # no encoder tensor at all: say which are missing
        prefix, outside = FINETUNED_LAYOUTS[0 if name == "av_hubert_seq2seq" else 1]

    tensors, file_names, unexpected, dropped = {}, {}, {}, {}
    for key, value in state.items():
        inner = key[len(prefix):]
        if not key.startswith(prefix):
            (dropped if key.startswith(outside) else unexpected)[key] = value
        elif not isinstance(value, torch.Tensor):
            unexpected[key] = value
        elif inner.startswith(tuple(rule for rule, _ in DROP_RULES)):
            dropped[key] = value
        else:
            ours = _RENAMES.get(inner, inner)
            tensors[ours], file_names[ours] = value, key
    audio = dropped.get(f"{prefix}feature_extractor_audio.proj.weight")  # (D, 104)
    fields, config_from = _config_fields(tensors, None if audio is None else audio.shape[1], model_cfg, path)
    size = {(768, 12): "Base", (1024, 24): "Large"}.get((fields["embed_dim"], fields.get("layers")), "custom")
    info = {"file": str(path), "model": name, "kind": "fine-tuned" if prefix else "pre-trained", "size": size,
            "config_from": config_from, "tensors": len(tensors), "dropped": len(dropped)}
    return EncoderWeights(tensors, file_names, prefix, unexpected, sorted(dropped), fields, info)


def _shape(value: object) -> str:
    return str(list(value.shape)) if isinstance(value, torch.Tensor) else f"(a {type(value).__name__}, not a tensor)"


def check_encoder_weights(weights: EncoderWeights, expected: Mapping[str, torch.Size], path: str | Path,
                          described: str) -> None:
    """Refuse, in one message, every missing, unexpected and wrongly shaped tensor of `weights`
    against `expected` (our name -> shape of the encoder built from the file's config)."""
    missing = [f"{weights.prefix}{k} {list(shape)}" for k, shape in expected.items() if k not in weights.tensors]
    unexpected = [f"{weights.file_names[k]} {_shape(v)}" for k, v in weights.tensors.items() if k not in expected]
    unexpected += [f"{k} {_shape(v)}" for k, v in weights.unexpected.items()]
    wrong = [f"{weights.file_names[k]} is {list(v.shape)}, expected {list(expected[k])}"
             for k, v in weights.tensors.items() if k in expected and v.shape != expected[k]]
    parts = [f"{len(items)} {what}: {'; '.join(items)}"
             for what, items in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", wrong)) if items]
    if parts:
        raise CheckpointFormatError(f"{path}: does not fit {described}: {' | '.join(parts)}")
