"""AV-HuBERT fairseq checkpoints read without fairseq: layouts, config, every tensor accounted for,
refusals (shapes, disallowed pickle globals), the converted folder and the CLI.

The files are built here the way fairseq writes them: `torch.save` of a trainer state whose
tensor names and shapes are the documented ones (docs/avhubert.md, written out below, not taken
from our model), with fairseq / sentencepiece objects pickled from stand-in classes registered
under the real module names while saving. Real-size Base and Large key sets are stored as
zero-stride views of one element (the file keeps one storage; names, shapes and dtypes are
real, values are not); the numerical test uses random values at a small transformer size with
AV-HuBERT's full ResNet front end (the fairseq config cannot describe a narrower one).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from avsr.backbones.avhubert import prepare_avhubert
from avsr.cli import main
from avsr.models.avhubert_fairseq import (AVHUBERT_LICENCE, CheckpointFormatError, pickle_globals,
                                          read_encoder_weights)
from avsr.models.video_encoder import (VideoEncoder, VideoEncoderConfig, load_video_encoder,
                                       read_fairseq_checkpoint)

# --------------------------------------------------------------------------- fairseq's classes, as pickled


class Dictionary:
    """fairseq.data.dictionary.Dictionary: pickled as its __dict__."""

    def __init__(self, symbols):
        self.bos_word, self.unk_word, self.pad_word, self.eos_word = "<s>", "<unk>", "<pad>", "</s>"
        self.symbols = ["<s>", "<pad>", "</s>", "<unk>", *symbols]
        self.count = [1] * len(self.symbols)
        self.indices = {s: i for i, s in enumerate(self.symbols)}
        self.bos_index, self.pad_index, self.eos_index, self.unk_index, self.nspecial = 0, 1, 2, 3, 4


class SentencePieceProcessor:
    """sentencepiece.SentencePieceProcessor: pickled as its serialized model (bytes)."""

    def __init__(self, proto: bytes = b"\n\x0e\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02"):
        self.proto = proto

    def __getstate__(self):
        return self.proto

    def __setstate__(self, state):
        self.proto = state


class SentencepieceBPE:
    """fairseq.data.encoders.sentencepiece_bpe.SentencepieceBPE: holds the processor."""

    def __init__(self):
        self.enable_sampling, self.alpha, self.sp = False, 0.1, SentencePieceProcessor()


_CLASSES = {"fairseq.data.dictionary": Dictionary, "fairseq.data.encoders.sentencepiece_bpe": SentencepieceBPE,
            "sentencepiece": SentencePieceProcessor}


@pytest.fixture
def fairseq_modules(monkeypatch):
    """The modules fairseq's objects pickle under, present only while a test saves files."""
    for module, cls in _CLASSES.items():
        monkeypatch.setattr(cls, "__module__", module)
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    for module, cls in _CLASSES.items():
        setattr(sys.modules[module], cls.__name__, cls)


class RunsCode:
    """A pickle payload: unpickling it calls `func(*args)`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# --------------------------------------------------------------------------- the documented layout

RESNET = (64, 64, 128, 256, 512)  # stem, then layer1..layer4 (AV-HuBERT's ResNet-18)


def _bn(prefix: str, c: int) -> dict:
    return {f"{prefix}.weight": [c], f"{prefix}.bias": [c], f"{prefix}.running_mean": [c],
            f"{prefix}.running_var": [c], f"{prefix}.num_batches_tracked": []}


def fairseq_shapes(dim: int, layers: int, ffn: int, kernel: int = 128, groups: int = 16, classes: int = 504) -> dict:
    """Name -> shape of a pre-trained AV-HuBERT model, from the documented table (not from our model)."""
    v = "feature_extractor_video.resnet"
    shapes = {"mask_emb": [104], "label_embs_concat": [classes, 256], "final_proj.weight": [256, dim],
              "final_proj.bias": [256], "feature_extractor_audio.proj.weight": [dim, 104],
              "feature_extractor_audio.proj.bias": [dim], f"{v}.frontend3D.0.weight": [64, 1, 5, 7, 7],
              **_bn(f"{v}.frontend3D.1", 64), f"{v}.frontend3D.2.weight": [64]}
    for stage in range(1, 5):
        c_in, c = RESNET[stage - 1], RESNET[stage]
        for block in (0, 1):
            p = f"{v}.trunk.layer{stage}.{block}"
            shapes.update({f"{p}.conv1.weight": [c, c_in if block == 0 else c, 3, 3], **_bn(f"{p}.bn1", c),
                           f"{p}.relu1.weight": [c], f"{p}.conv2.weight": [c, c, 3, 3], **_bn(f"{p}.bn2", c),
                           f"{p}.relu2.weight": [c]})
            if block == 0 and stage > 1:
                shapes.update({f"{p}.downsample.0.weight": [c, c_in, 1, 1], **_bn(f"{p}.downsample.1", c)})
    shapes.update({"feature_extractor_video.proj.weight": [dim, 512], "feature_extractor_video.proj.bias": [dim],
                   "layer_norm.weight": [2 * dim], "layer_norm.bias": [2 * dim],
                   "post_extract_proj.weight": [dim, 2 * dim], "post_extract_proj.bias": [dim],
                   "encoder.pos_conv.0.weight_g": [1, 1, kernel],
                   "encoder.pos_conv.0.weight_v": [dim, dim // groups, kernel], "encoder.pos_conv.0.bias": [dim]})
    for i in range(layers):
        p = f"encoder.layers.{i}"
        for proj in ("q", "k", "v", "out"):
            shapes.update({f"{p}.self_attn.{proj}_proj.weight": [dim, dim], f"{p}.self_attn.{proj}_proj.bias": [dim]})
        shapes.update({f"{p}.self_attn_layer_norm.weight": [dim], f"{p}.self_attn_layer_norm.bias": [dim],
                       f"{p}.fc1.weight": [ffn, dim], f"{p}.fc1.bias": [ffn], f"{p}.fc2.weight": [dim, ffn],
                       f"{p}.fc2.bias": [dim], f"{p}.final_layer_norm.weight": [dim],
                       f"{p}.final_layer_norm.bias": [dim]})
    shapes.update({"encoder.layer_norm.weight": [dim], "encoder.layer_norm.bias": [dim]})
    return shapes


DROPPED = {"mask_emb", "label_embs_concat", "final_proj.weight", "final_proj.bias",
           "feature_extractor_audio.proj.weight", "feature_extractor_audio.proj.bias"}


def hollow(shapes: dict) -> OrderedDict:
    """Real names and shapes, one stored element: zero-stride views of a single value."""
    one, count = torch.zeros(1), torch.zeros((), dtype=torch.long)
    return OrderedDict((k, count if not s else one.expand(*s)) for k, s in shapes.items())


def random_state(shapes: dict, seed: int = 0) -> OrderedDict:
    """Random float32 values (positive BatchNorm variances), int64 batch counters."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(1000)
        elif k.endswith("running_var"):
            out[k] = torch.rand(s, generator=g) + 0.5
        else:
            out[k] = torch.randn(s, generator=g) * 0.1
    return out


def model_cfg(dim: int, layers: int, ffn: int, heads: int, kernel: int = 128, groups: int = 16) -> dict:
    """An AV-HuBERT pre-training `cfg.model`, with the interpolations fairseq leaves unresolved."""
    return {"_name": "av_hubert", "label_rate": "${task.label_rate}", "input_modality": "${task.input_modality}",
            "extractor_mode": "default", "encoder_layers": layers, "encoder_embed_dim": dim,
            "encoder_ffn_embed_dim": ffn, "encoder_attention_heads": heads, "activation_fn": "gelu",
            "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.05,
            "dropout_input": 0.1, "dropout_features": 0.1, "final_dim": 256, "untie_final_proj": True,
            "layer_norm_first": True, "conv_pos": kernel, "conv_pos_groups": groups, "resnet_relu_type": "prelu",
            "resnet_weights": None, "sub_encoder_layers": 0, "audio_feat_dim": 104, "modality_dropout": 0.5,
            "audio_dropout": 0.5, "modality_fuse": "concat", "masking_type": "input", "feature_grad_mult": 1.0}


def trainer_cfg(model: dict) -> dict:
    return {"_name": None, "common": {"fp16": True, "seed": 1337}, "model": model,
            "task": {"_name": "av_hubert_pretraining", "labels": ["km"], "label_rate": 25,
                     "input_modality": "image", "normalize": True, "data": "/data/lrs3"},
            "optimization": {"max_update": 400000, "lr": [0.002]}, "checkpoint": {"save_dir": "checkpoints"}}


def trainer_state(model_state: dict, cfg: dict, task_state: dict) -> dict:
    """What fairseq's trainer saves (args None since its Hydra configs)."""
    return {"args": None, "cfg": cfg, "model": model_state, "criterion": OrderedDict(),
            "optimizer_history": [{"criterion_name": "AV_HubertCriterion", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {"best": np.float64(3.25)}, "num_updates": 400000}],
            "task_state": task_state,
            "extra_state": {"metrics": {"train": [(0, "loss", "AverageMeter", {"val": np.float32(2.5), "count": 7})]},
                            "train_iterator": {"epoch": 42, "iterations_in_epoch": 0, "shuffle": True},
                            "previous_training_time": 123456.7, "val_loss": np.float64(3.1),
                            "history": np.arange(4, dtype=np.float32)}}


def pretrained(model_state: dict, mcfg: dict) -> dict:
    return trainer_state(model_state, trainer_cfg(mcfg), {"dictionaries": [Dictionary([str(i) for i in range(8)])]})


def finetuned(model_state: dict, mcfg: dict, namespace_args: bool = False, prefix: str = "encoder.w2v_model.",
              name: str = "av_hubert_seq2seq") -> dict:
    """A fine-tuned file: encoder under `prefix`, a decoder (seq2seq) or CTC head beside it,
    the pre-training cfg in w2v_args (a dict, or a flat argparse.Namespace in older files)."""
    state = OrderedDict((prefix + k, v) for k, v in model_state.items() if k not in ("label_embs_concat",))
    dim = mcfg["encoder_embed_dim"]
    if name == "av_hubert_seq2seq":
        state.update({"decoder.embed_tokens.weight": torch.zeros(1).expand(1000, dim),
                      "decoder.layers.0.self_attn.k_proj.weight": torch.zeros(1).expand(dim, dim),
                      "decoder.layer_norm.weight": torch.zeros(1).expand(dim)})
    else:
        state.update({"w2v_encoder.proj.weight": torch.zeros(1).expand(30, dim),
                      "w2v_encoder.proj.bias": torch.zeros(1).expand(30)})
    w2v_args = argparse.Namespace(**mcfg) if namespace_args else trainer_cfg(mcfg)
    ft = {"_name": name, "w2v_path": "/checkpoint/large_vox_iter5.pt", "dropout": 0.0, "attention_dropout": 0.0,
          "activation_dropout": 0.1, "dropout_input": 0.0, "layerdrop": 0.1, "apply_mask": False,
          "normalize": "${task.normalize}", "data": "${task.data}", "w2v_args": w2v_args,
          "decoder_layers": 6, "decoder_embed_dim": dim}
    cfg = {**trainer_cfg(ft), "task": {"_name": "av_hubert_pretraining", "fine_tuning": True,
                                       "tokenizer_bpe_model": "spm1000/spm_unigram1000.model"}}
    return trainer_state(state, cfg, {"dictionaries": [Dictionary(["a"])], "target_dictionary": Dictionary(["b"]),
                                      "s2s_tokenizer": SentencepieceBPE()})


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


# Small transformer, full ResNet: what the numerical tests load.
SMALL = dict(dim=64, layers=2, ffn=128, heads=4, kernel=8, groups=4)


def small_cfg() -> dict:
    return model_cfg(**SMALL)


def small_shapes() -> dict:
    return fairseq_shapes(SMALL["dim"], SMALL["layers"], SMALL["ffn"], SMALL["kernel"], SMALL["groups"])


def outputs(encoder: VideoEncoder) -> torch.Tensor:
    """Features of two padded clips, (2, 6, 64)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        return encoder(torch.randn(2, 6, 32, 32, generator=g), torch.tensor([6, 4]))[0]


@pytest.fixture(scope="module")
def small() -> tuple[OrderedDict, torch.Tensor]:
    """Random small-size weights in fairseq names, and the outputs of the same weights put into
    VideoEncoder directly (the drop list applied by hand)."""
    state = random_state(small_shapes())
    encoder = VideoEncoder(VideoEncoderConfig(embed_dim=64, layers=2, heads=4, ffn_dim=128, conv_pos=8,
                                              conv_pos_groups=4))
    encoder.load_state_dict({k: v for k, v in state.items() if k not in DROPPED}, strict=True)
    return state, outputs(encoder.eval())


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("size, dim, layers, ffn, heads", [("Base", 768, 12, 3072, 12), ("Large", 1024, 24, 4096, 16)])
def test_real_size_files_load_with_every_tensor_used_or_dropped(tmp_path, fairseq_modules, size, dim, layers, ffn, heads):
    shapes = fairseq_shapes(dim, layers, ffn)
    path = save(pretrained(hollow(shapes), model_cfg(dim, layers, ffn, heads)), tmp_path / f"{size}.pt")
    assert path.stat().st_size < 2_000_000  # one stored element per storage-sharing key set

    weights = read_encoder_weights(path)
    assert not weights.unexpected
    assert set(weights.dropped) == DROPPED
    assert set(weights.file_names.values()) | set(weights.dropped) == set(shapes)

    cfg, state, info = read_fairseq_checkpoint(path)
    assert cfg == getattr(VideoEncoderConfig, size.lower())(layerdrop=0.05)
    assert set(state) == set(shapes) - DROPPED
    assert all(list(state[k].shape) == shapes[k] for k in state)
    assert info == {"file": str(path), "model": "av_hubert", "kind": "pre-trained", "size": size, "config_from": "cfg",
                    "tensors": len(shapes) - len(DROPPED), "dropped": len(DROPPED)}


@pytest.mark.parametrize("size, prefix, name, namespace_args", [
    ("Large", "encoder.w2v_model.", "av_hubert_seq2seq", False),
    ("Base", "encoder.w2v_model.", "av_hubert_seq2seq", True),
    ("Base", "w2v_encoder.w2v_model.", "av_hubert_ctc", False),
])
def test_finetuned_layouts(tmp_path, fairseq_modules, size, prefix, name, namespace_args):
    dim, layers, ffn, heads = (1024, 24, 4096, 16) if size == "Large" else (768, 12, 3072, 12)
    shapes = fairseq_shapes(dim, layers, ffn)
    obj = finetuned(hollow(shapes), model_cfg(dim, layers, ffn, heads), namespace_args, prefix, name)
    path = save(obj, tmp_path / "ft.pt")

    weights = read_encoder_weights(path)
    outside = {k for k in obj["model"] if not k.startswith(prefix)}
    assert outside and not weights.unexpected
    assert set(weights.dropped) == {prefix + k for k in DROPPED - {"label_embs_concat"}} | outside
    cfg, state, info = read_fairseq_checkpoint(path)
    # Sizes from w2v_args; dropout and LayerDrop from the fine-tuning config, as fairseq overrides them.
    assert cfg == getattr(VideoEncoderConfig, size.lower())(dropout=0.0, attention_dropout=0.0, activation_dropout=0.1,
                                                            dropout_input=0.0, layerdrop=0.1)
    assert set(state) == set(shapes) - DROPPED
    assert (info["kind"], info["model"], info["size"], info["config_from"]) == ("fine-tuned", name, size, "cfg")


def test_weights_only_file_takes_its_config_from_shapes(tmp_path):
    """A bare state dict, saved with pickle protocol 4 (globals by STACK_GLOBAL) and the
    parametrization names newer torch gives weight-normed convs."""
    shapes = fairseq_shapes(768, 12, 3072)
    state = hollow(shapes)
    state["encoder.pos_conv.0.parametrizations.weight.original0"] = state.pop("encoder.pos_conv.0.weight_g")
    state["encoder.pos_conv.0.parametrizations.weight.original1"] = state.pop("encoder.pos_conv.0.weight_v")
    path = tmp_path / "weights.pt"
    torch.save(state, path, pickle_protocol=4)
    cfg, state, info = read_fairseq_checkpoint(path)
    assert (cfg.embed_dim, cfg.layers, cfg.ffn_dim, cfg.heads, cfg.conv_pos, cfg.conv_pos_groups) == (768, 12, 3072, 12,
                                                                                                    128, 16)
    assert (info["config_from"], info["size"], info["model"]) == ("tensor shapes", "Base", None)
    assert set(state) == set(shapes) - DROPPED

    odd = fairseq_shapes(256, 2, 512)  # a width with no known head count
    with pytest.raises(CheckpointFormatError, match="attention heads its D=256"):
        read_fairseq_checkpoint(save(hollow(odd), tmp_path / "odd.pt"))


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("layout", ["pre-trained", "fine-tuned"])
def test_loaded_encoder_equals_the_same_weights_loaded_directly(tmp_path, fairseq_modules, small, layout, capsys):
    state, expected = small
    obj = pretrained(state, small_cfg()) if layout == "pre-trained" else finetuned(state, small_cfg())
    encoder = load_video_encoder(save(obj, tmp_path / "small.pt"))
    assert not encoder.training
    assert torch.equal(outputs(encoder), expected)
    assert capsys.readouterr().err.count(AVHUBERT_LICENCE) == 1  # once per load


# --------------------------------------------------------------------------- refusals


def _broken(tmp_path: Path, edit) -> Path:
    shapes = small_shapes()
    state = hollow(shapes)
    edit(state)
    return save({"cfg": trainer_cfg(small_cfg()), "model": state}, tmp_path / "broken.pt")


def _missing(state):
    del state["encoder.layers.1.fc2.bias"]


def _extra(state):
    state["encoder.layers.0.self_attn.bias_k"] = torch.zeros(1, 1, 64)


def _wrong(state):
    state["encoder.layers.0.fc1.weight"] = torch.zeros(129, 64)


@pytest.mark.parametrize("edit, expected", [
    (_missing, "1 missing: encoder.layers.1.fc2.bias [64]"),
    (_extra, "1 unexpected: encoder.layers.0.self_attn.bias_k [1, 1, 64]"),
    (_wrong, "1 wrongly shaped: encoder.layers.0.fc1.weight is [129, 64], expected [128, 64]"),
])
def test_mismatched_tensors_are_named(tmp_path, edit, expected):
    path = _broken(tmp_path, edit)
    with pytest.raises(CheckpointFormatError) as err:
        read_fairseq_checkpoint(path)
    assert str(err.value).startswith(f"{path}: does not fit the AV-HuBERT video encoder")
    assert expected in str(err.value)


def test_all_mismatches_in_one_message(tmp_path, capsys):
    path = _broken(tmp_path, lambda s: (_missing(s), _extra(s), _wrong(s)))
    with pytest.raises(CheckpointFormatError) as err:
        read_fairseq_checkpoint(path)
    message = str(err.value)
    assert "encoder.layers.1.fc2.bias" in message and "bias_k" in message and "[129, 64]" in message
    assert AVHUBERT_LICENCE not in capsys.readouterr().err  # nothing was loaded


@pytest.mark.parametrize("payload, refused", [
    (lambda marker: RunsCode(os.system, f"touch {marker}"), os.system.__module__ + ".system"),
    (lambda marker: RunsCode(exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
])
def test_code_in_the_pickle_is_refused_before_it_runs(tmp_path, fairseq_modules, payload, refused):
    marker = tmp_path / "ran"
    obj = pretrained(hollow(small_shapes()), small_cfg())
    obj["extra_state"]["hook"] = payload(marker)
    path = save(obj, tmp_path / "evil.pt")
    with pytest.raises(CheckpointFormatError) as err:
        read_fairseq_checkpoint(path)
    assert str(err.value).startswith(f"{path}: refused: its pickle references {refused},")
    assert not marker.exists()


def test_the_unpickler_refuses_even_what_the_scan_missed(tmp_path, fairseq_modules, monkeypatch):
    """The scan only makes the message early and complete; find_class is what enforces."""
    import avsr.models.avhubert_fairseq as fairseq_reader

    marker = tmp_path / "ran"
    obj = pretrained(hollow(small_shapes()), small_cfg())
    obj["extra_state"]["hook"] = RunsCode(os.system, f"touch {marker}")
    path = save(obj, tmp_path / "evil.pt")
    monkeypatch.setattr(fairseq_reader, "pickle_globals", lambda data: [])
    with pytest.raises(CheckpointFormatError, match=r"refused: its pickle references \w+\.system,"):
        read_fairseq_checkpoint(path)
    assert not marker.exists()


def test_the_scan_reads_protocol_4_globals():
    """STACK_GLOBAL takes its names from the stack (and the memo): the scan still names them."""
    data = pickle.dumps([RunsCode(os.system, "true"), RunsCode(os.getcwd)], protocol=4)
    module = os.system.__module__  # "posix": written once, then fetched from the memo
    assert pickle_globals(data) == [f"{module}.system", f"{module}.getcwd"]
    assert pickle_globals(pickle.dumps(b"x", protocol=2)) == ["_codecs.encode"]


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip, not a pickle")
    with pytest.raises(CheckpointFormatError, match="not a PyTorch checkpoint"):
        read_fairseq_checkpoint(bad)
    with pytest.raises(CheckpointFormatError, match="no such file"):
        read_fairseq_checkpoint(tmp_path / "gone.pt")
    other = save({"cfg": {"model": {"_name": "wav2vec2"}}, "model": {"w": torch.zeros(1)}}, tmp_path / "w2v.pt")
    with pytest.raises(CheckpointFormatError, match="'wav2vec2' checkpoint, not AV-HuBERT"):
        read_fairseq_checkpoint(other)


# --------------------------------------------------------------------------- folder and CLI


def test_prepare_cli_writes_a_folder_once(tmp_path, fairseq_modules, small, capsys):
    state, expected = small
    path = save(finetuned(state, small_cfg()), tmp_path / "small.pt")
    out = tmp_path / "models" / "avhubert"
    assert main(["prepare", "avhubert", str(path), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out) and captured.err.count(AVHUBERT_LICENCE) == 1

    config = json.loads((out / "config.json").read_text())
    assert config["source"] == "fairseq-avhubert" and config["licence"] == AVHUBERT_LICENCE
    assert config["source_size"] == path.stat().st_size and len(config["source_sha256"]) == 64
    assert torch.equal(outputs(load_video_encoder(out)), expected)
    assert capsys.readouterr().err.count(AVHUBERT_LICENCE) == 1  # loading the folder says it too

    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["prepare", "avhubert", str(path), "--out", str(out)]) == 0  # same file: nothing to do
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == written
    assert AVHUBERT_LICENCE not in capsys.readouterr().err

    other = save(pretrained(state, small_cfg()), tmp_path / "other.pt")
    with pytest.raises(Exception, match="holds the conversion of another file"):
        prepare_avhubert(other, out)


@pytest.mark.parametrize("content", [b"garbage", None])
def test_prepare_cli_bad_file_exits_2_without_traceback(tmp_path, capsys, content):
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    assert main(["prepare", "avhubert", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_pt_file_is_a_valid_video_encoder_setting(tmp_path):
    from avsr.models.avsr_model import AVSRConfig
    from avsr.models.loading import BackboneError, check_backbones

    from transformers import LlamaConfig

    llm = tmp_path / "llm"  # a config.json is all check_backbones reads of it (check_on_meta)
    LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=100).save_pretrained(llm)
    pt = save(hollow(fairseq_shapes(768, 12, 3072)), tmp_path / "base_vox_iter5.pt")
    check_backbones(AVSRConfig(llm=str(llm), video_encoder=str(pt), tasks=("vsr",)))
    with pytest.raises(BackboneError, match="model.video_encoder: no such folder .*avsr prepare avhubert"):
        check_backbones(AVSRConfig(llm=str(llm), video_encoder=str(tmp_path / "gone.pt"), tasks=("vsr",)))
