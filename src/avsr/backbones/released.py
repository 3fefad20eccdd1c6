"""`avsr import`: the authors' released checkpoints -> an ordinary avsr checkpoint folder.

The files (Llama-AVSR, Omni-AVSR S / T / ST, Llama-SMoP; docs/import.md says where each is
published) come from the authors' averaging script (Omni-AVSR `utils/avg_checkpoints.py`
L14-L46): the Lightning `state_dict` entries under `model.`, prefix stripped, `torch.save`d as a
plain dict. So one file holds the whole model, frozen parts included:

- `audio_encoder.*`: the transformers Whisper encoder (Llama-AVSR `models/modeling_AVSRLLM.py` L57);
- `video_encoder.*`: fairseq's AV-HuBERT, with `encoder.layers.{i}.self_attn.lora_{down,up}_{Q,V}`
  where its LoRA was trained (L98-L119: inner size D / 16, scale 2, added to the q and v
  projections before fairseq scales q: `fairseq/modules/multihead_attention.py` L489-L511);
- `audio_proj` / `video_proj`: `Sequential(Linear, ReLU, Linear[, LayerNorm])` (L79-L139), or a
  `ModuleList` of them, one per rate in the order of the rate list (Omni-AVSR
  `Omni_AVSR/modeling_OmniAVSR.py` L86-L111, L171-L196); where Omni passes a LayerNorm as a
  Linear's `bias` argument (L104, L188) there are no LayerNorm weights, so the keys decide;
- `audiovisual_proj` (Llama-SMoP, Dr-SHAP-AV `scripts/modeling_LlamaSMoP.py` L28-L77): a
  bias-free router `gate` over `experts.{e}` = `Sequential(Linear, ReLU, Linear, LayerNorm)`,
  top-k, one router for the audio and video tokens concatenated (JEJR, L587-L595);
- `llm.*`: the LLM with its embedding table resized for `<pad>` `<audio>` `</audio>` `<video>`
  `</video>` (added in that order: Omni-AVSR `Omni_AVSR/lightning_OmniAVSR.py` L84), and LoRA on
  q and v: `lora_{down,up}_{Q,V}` (one adapter), `.{audio,video,audiovisual}` (one per task) and
  `_shared` (Omni-AVSR `Omni_AVSR/Llama_LoRA.py` L124-L192), inner size hidden / RANK, the v
  adapter's output the key-value width, q + scale * up(down(h)) with scale ALPHA / RANK, task and
  shared adapters summed before scaling (L249-L258);
- `prompt_audio` / `prompt_video` / `prompt_audiovisual` (Omni): buffers holding the prompts'
  embeddings (`modeling_OmniAVSR.py` L218-L221), checked here to equal the LLM's rows of the
  prompt tokens, which the model reads.

The layout is recognised from the keys; every size (layers, widths, rates of stacked frames,
LoRA sizes, experts) from the tensor shapes, checked against `--llm`'s config. What the shapes
cannot say is taken from the file name of a release (its rates, e.g. `pool-audio4-16_video2-5`)
or given (`--audio-rates`, `--video-rates`), or is the authors' published setting: the LoRA scale
ALPHA / RANK = 0.125 (`--rank 32 --alpha 4`, `--reduction_lora 64 --alpha 8` in every README
command), the AV-HuBERT LoRA scale 2 (hard-coded), SMoP's top-2. Every tensor of the file is used
once or listed in the report with the reason it is not needed; anything else is refused.

The result is an ordinary checkpoint: trainable.safetensors (the LoRA adapters and projectors)
and config.json, with the frozen backbones the file carries written in the formats avsr reads
under backbones/ inside it (a Whisper encoder folder, an AV-HuBERT encoder folder, the LLM with
its resized table and the tokenizer with the added tokens), recorded relative to the
checkpoint, plus import_report.json. The file is a pickle: it is read with torch's
`weights_only` loader (a file that names any other global is refused before anything is
unpickled), memory-mapped, and written out piece by piece (the LLM in shards), so an 8B file
(16 GB) never has two full copies in memory.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from avsr.errors import AvsrError
from avsr.io import RUN_MARKER, atomic_folder, check_output, sha256_file
from avsr.models.avhubert_fairseq import (AVHUBERT_LICENCE, DROP_RULES, FOLDER_SOURCE, encoder_weights, pickle_globals,
                                          torch_zip_pickle)
from avsr.models.avsr_model import SPECIAL_TOKENS, AVSRConfig, AVSRModel
from avsr.models.loading import CONFIG, WEIGHTS, write_checkpoint_files
from avsr.models.presets import WHISPERS
from avsr.models.tasks import MODALITIES, PROMPTS, adapter_names, scale_name

LAYOUTS = ("llama-avsr", "omni-avsr", "smop")
FORMATS = ("auto", *LAYOUTS)
REPORT = "import_report.json"
AUTHORS_DECODING = {"num_beams": 15, "max_new_tokens": 32}  # every eval command of the three READMEs
LORA_SCALE = 0.125  # ALPHA / RANK of every release (README commands)
VIDEO_LORA_SCALE = 2.0  # `scaling_lora = 2`, hard-coded (Llama-AVSR modeling_AVSRLLM.py L109)
SMOP_TOP_K = 2  # `--MoP-topk 2` of the released Llama-SMoP (Dr-SHAP-AV README)
SHARD_BYTES = 1 << 30  # the LLM is written in safetensors shards of about this size
TASK_OF = {"audio": "asr", "video": "vsr", "audiovisual": "avsr"}  # the authors' modality names
PROJECTOR_OF = {"audio": "audio_proj", "video": "video_proj"}
_PLAIN_GLOBALS = {"collections.OrderedDict", "builtins.set", "builtins.frozenset", "_codecs.encode"}


class ReleasedCheckpointError(AvsrError):
    """A file `avsr import` cannot read, or whose layout or sizes do not fit `--llm`."""


@dataclass
class Plan:
    """What the import writes: backbone tensors by folder, the trainable tensors in our names,
    the model config, and every file tensor's fate."""
    layout: str
    variant: str
    tasks: tuple[str, ...]
    rates: dict[str, tuple[int, ...]] = field(default_factory=dict)
    trainable: dict[str, torch.Tensor] = field(default_factory=dict)
    used: dict[str, str] = field(default_factory=dict)  # file key -> where it went
    not_needed: dict[str, str] = field(default_factory=dict)  # file key -> why
    settings: dict = field(default_factory=dict)  # AVSRConfig fields


# ------------------------------------------------------------------------------ reading


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, memory-mapped, through torch's weights-only unpickler; the globals its
    pickle names are read first, so a file that would run code is refused before unpickling."""
    damaged = f"{path}: not a complete PyTorch checkpoint (torch.save's zip format): truncated or damaged"
    data = torch_zip_pickle(path, ReleasedCheckpointError, damaged, "a checkpoint of the authors")
    try:
        foreign = sorted({g for g in pickle_globals(data) if not g.startswith("torch.") and g not in _PLAIN_GLOBALS})
    except ValueError as err:
        raise ReleasedCheckpointError(f"{damaged} ({err})") from None
    if foreign:
        raise ReleasedCheckpointError(f"{path}: refused: its pickle references {', '.join(foreign)}; the authors' "
                                      "files hold tensors only (a pickle can run code; nothing from the file was run)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - the unpickler's and the zip reader's errors are many
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ReleasedCheckpointError(f"{damaged} ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        raise ReleasedCheckpointError(f"{path}: a Lightning training checkpoint, not a released model: average it "
                                      "with the authors' utils/avg_checkpoints.py into a .pth first")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ReleasedCheckpointError(f"{path}: expected a dict of tensors (the authors' averaged state dict), got "
                                      f"{type(state).__name__}")
    return state


def detect_layout(state: dict, path: Path) -> str:
    """The layout the keys say (see the module docstring)."""
    if "audiovisual_proj.gate.weight" in state:
        return "smop"
    if any(k.startswith("audiovisual_proj.") for k in state):
        raise ReleasedCheckpointError(f"{path}: audiovisual_proj without a router gate (Llama-AVSR's AV-HuBERT "
                                      "audio-visual variant) is not supported")
    if any(k.startswith("prompt_") for k in state):
        return "omni-avsr"
    if any(k.startswith(("audio_proj.", "video_proj.")) for k in state) and any(k.startswith("llm.") for k in state):
        return "llama-avsr"
    prefixes = sorted({k.split(".")[0] for k in state})
    raise ReleasedCheckpointError(f"{path}: unknown layout: none of Llama-AVSR, Omni-AVSR or Llama-SMoP (expected "
                                  f"llm.* and audio_proj / video_proj / audiovisual_proj); its keys start with "
                                  f"{', '.join(prefixes[:12])}")


def rates_from_name(name: str, modalities: list[str]) -> dict[str, tuple[int, ...]]:
    """The compression rates a release's file name states ({} when it states none):
    `pool-audio4-16_video2-5`, `pool-4-2` (audio, video), `Adown4_Vdown2`, and `down3` /
    `Vdown5` / `pool-16` for a file of one modality."""
    found: dict[str, tuple[int, ...]] = {}
    if m := re.search(r"pool-audio([\d-]+)_video([\d-]+)", name):
        found = {"audio": _ints(m.group(1)), "video": _ints(m.group(2))}
    elif (m := re.search(r"pool-(\d+)-(\d+)", name)) and len(modalities) == 2:
        found = {"audio": (int(m.group(1)),), "video": (int(m.group(2)),)}
    else:
        for modality, letter in (("audio", "A"), ("video", "V")):
            if m := re.search(rf"(?<![A-Za-z]){letter}down(\d+)", name):
                found[modality] = (int(m.group(1)),)
        if not found and len(modalities) == 1 and (m := re.search(r"(?:(?<![A-Za-z])down|pool-)(\d+)", name)):
            found = {modalities[0]: (int(m.group(1)),)}
    return {k: v for k, v in found.items() if k in modalities}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.strip("-").split("-"))


# ------------------------------------------------------------------------------ the plan


def _children(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _shape_error(path: Path, what: str, problems: list[str]) -> ReleasedCheckpointError:
    return ReleasedCheckpointError(f"{path}: {what}: {'; '.join(problems[:8])}"
                                   + (f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""))


def _compare(found: dict[str, torch.Tensor], expected: dict[str, torch.Size], prefix: str, path: Path,
             what: str) -> None:
    """Refuse, in one message, missing, unexpected and wrongly shaped tensors."""
    problems = [f"missing {prefix}{k} {list(s)}" for k, s in expected.items() if k not in found]
    problems += [f"unexpected {prefix}{k}" for k in found if k not in expected]
    problems += [f"{prefix}{k} is {list(v.shape)}, expected {list(expected[k])}" for k, v in found.items()
                 if k in expected and v.shape != expected[k]]
    if problems:
        raise _shape_error(path, what, problems)


def _whisper_config(tensors: dict[str, torch.Tensor], path: Path):
    """The Whisper encoder's config from its tensor shapes (heads: the width's model, presets)."""
    from transformers import WhisperConfig

    conv = tensors.get("conv1.weight")  # (D, n_mels, 3)
    positions = tensors.get("embed_positions.weight")  # (1500, D)
    fc1 = tensors.get("layers.0.fc1.weight")  # (FFN, D)
    if conv is None or positions is None or fc1 is None:
        raise ReleasedCheckpointError(f"{path}: audio_encoder.* is not a Whisper encoder (no conv1, embed_positions "
                                      "or layers.0.fc1)")
    width = conv.shape[0]
    heads = {p.d_model: p.heads for p in WHISPERS.values()}.get(width)
    if heads is None:
        raise ReleasedCheckpointError(f"{path}: a Whisper encoder of width {width}, which no Whisper model has "
                                      f"(known: {sorted({p.d_model for p in WHISPERS.values()})})")
    layers = 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("layers."))
    return WhisperConfig(d_model=width, encoder_layers=layers, encoder_attention_heads=heads, encoder_ffn_dim=fc1.shape[0],
                         decoder_layers=layers, decoder_attention_heads=heads, decoder_ffn_dim=fc1.shape[0],
                         num_mel_bins=conv.shape[1], max_source_positions=positions.shape[0])


def _projectors(state: dict, name: str) -> dict[int | None, dict[str, torch.Tensor]]:
    """{index in the ModuleList (None: one Sequential): {layer key: tensor}} of `audio_proj` etc."""
    found: dict[int | None, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in _children(state, name + ".").items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
            found[int(parts[0])][f"{parts[1]}.{parts[2]}"] = value
        else:
            found[None][key] = value
    if None in found and len(found) > 1:
        raise ReleasedCheckpointError(f"{name}: mixes a single projector and a list of them")
    return dict(found)


def _mlp_keys(layers: dict[str, torch.Tensor], where: str, path: Path) -> tuple[int, int, int, bool]:
    """(input width, hidden width, output width, LayerNorm) of one projector / expert, checked."""
    first, second = layers.get("0.weight"), layers.get("2.weight")
    if first is None or second is None or "0.bias" not in layers or "2.bias" not in layers:
        raise ReleasedCheckpointError(f"{path}: {where} is not Linear, ReLU, Linear[, LayerNorm] (keys "
                                      f"{sorted(layers)})")
    norm = "3.weight" in layers
    expected = {"0.weight": (first.shape[0], first.shape[1]), "0.bias": (first.shape[0],),
                "2.weight": (second.shape[0], first.shape[0]), "2.bias": (second.shape[0],),
                **({"3.weight": (second.shape[0],), "3.bias": (second.shape[0],)} if norm else {})}
    _compare(layers, {k: torch.Size(v) for k, v in expected.items()}, f"{where}.", path, "projector")
    return first.shape[1], first.shape[0], second.shape[0], norm


def _mlp_names(layers: dict[str, torch.Tensor], ours: str) -> dict[str, str]:
    """File layer keys -> our names: `0` -> net.0, `2` -> net.2, `3` -> norm (avsr.models.projectors.mlp)."""
    return {k: f"{ours}.{'norm' if k.startswith('3.') else 'net.' + k.split('.')[0]}.{k.split('.')[1]}" for k in layers}


class _Planner:
    """Builds the Plan from the file's tensors (see the module docstring for the layout)."""

    def __init__(self, state: dict, path: Path, layout: str, llm_config, tokenizer, audio_rates, video_rates,
                 lora_scale: float, top_k: int):
        self.state, self.path, self.layout = state, path, layout
        self.llm_config, self.tokenizer = llm_config, tokenizer
        self.given = {"audio": tuple(audio_rates or ()), "video": tuple(video_rates or ())}
        self.lora_scale, self.top_k = lora_scale, top_k
        self.plan = Plan(layout, layout, ())
        self.backbones: dict[str, dict[str, torch.Tensor]] = {}  # folder -> tensors in its names
        self.whisper = self.video_cfg = None
        self.needed: list[str] = []  # the modalities the tasks read

    def use(self, key: str, where: str) -> None:
        if key in self.plan.used or key in self.plan.not_needed:
            raise AssertionError(f"{key} used twice")
        self.plan.used[key] = where

    def skip(self, key: str, why: str) -> None:
        self.plan.not_needed[key] = why

    def run(self) -> Plan:
        modalities = self.modalities()
        widths = {m: self.encoder(m) for m in modalities}
        self.llm()
        self.projector(modalities, widths)
        self.lora()
        if self.layout == "omni-avsr":
            self.prompts()
        left = [k for k in self.state if k not in self.plan.used and k not in self.plan.not_needed]
        if left:
            raise _shape_error(self.path, f"tensors the {self.layout} layout does not have", left)
        return self.plan

    def modalities(self) -> list[str]:
        if self.layout == "smop":
            tasks = ("avsr",)
        elif self.layout == "omni-avsr":
            missing = [f"prompt_{m}" for m in TASK_OF if f"prompt_{m}" not in self.state]
            if missing:
                raise ReleasedCheckpointError(f"{self.path}: an Omni-AVSR file without {', '.join(missing)}")
            tasks = ("asr", "vsr", "avsr")
        else:
            have = [m for m in ("audio", "video") if any(k.startswith(PROJECTOR_OF[m] + ".") for k in self.state)]
            tasks = ("avsr",) if len(have) == 2 else (TASK_OF[have[0]],)
        self.plan.tasks = tasks
        needed = [m for m in ("audio", "video") if any(m in MODALITIES[t] for t in tasks)]
        for m in needed:
            if not any(k.startswith(f"{m}_encoder.") for k in self.state):
                raise ReleasedCheckpointError(f"{self.path}: its projectors read {m}, but it holds no {m}_encoder.*")
        self.needed = needed
        return needed

    # -------------------------------------------------------------- encoders
    def encoder(self, modality: str) -> int:
        """Plan the encoder's backbone folder; its output width."""
        return self.audio_encoder() if modality == "audio" else self.video_encoder()

    def audio_encoder(self) -> int:
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        tensors = _children(self.state, "audio_encoder.")
        self.whisper = _whisper_config(tensors, self.path)
        with torch.device("meta"):
            expected = {k: v.shape for k, v in WhisperEncoder(self.whisper).state_dict().items()}
        _compare(tensors, expected, "audio_encoder.", self.path, "does not fit the Whisper encoder its shapes describe")
        self.backbones["whisper"] = {f"encoder.{k}": v for k, v in tensors.items()}
        for k in tensors:
            self.use(f"audio_encoder.{k}", f"backbones/whisper: encoder.{k}")
        return self.whisper.d_model

    def video_encoder(self) -> int:
        from avsr.models.video_encoder import checked_fairseq_weights

        tensors = _children(self.state, "video_encoder.")
        lora = {k: v for k, v in tensors.items() if ".self_attn.lora_" in k}
        weights = encoder_weights({k: v for k, v in tensors.items() if k not in lora}, None,
                                  f"{self.path} video_encoder.*")
        self.video_cfg, own, _ = checked_fairseq_weights(weights, f"{self.path} video_encoder.*")
        self.backbones["avhubert"] = dict(own)
        for ours, key in weights.file_names.items():
            self.use(f"video_encoder.{key}", f"backbones/avhubert: {ours}")
        reasons = dict(DROP_RULES)
        for key in weights.dropped:
            why = next(r for prefix, r in reasons.items() if key.startswith(prefix))
            self.skip(f"video_encoder.{key}", f"AV-HuBERT {why}")
        if lora:
            self.video_lora(lora, self.video_cfg.embed_dim)
        return self.video_cfg.embed_dim

    def video_lora(self, lora: dict[str, torch.Tensor], width: int) -> None:
        """AV-HuBERT's q / v LoRA -> our `video` adapter (reduction R = D / inner size, scale 2)."""
        inner = {v.shape[0] for k, v in lora.items() if ".lora_down_" in k}
        if len(inner) != 1:
            raise _shape_error(self.path, "video_encoder LoRA sizes differ", sorted(lora))
        r = inner.pop()
        for key, value in lora.items():
            m = re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.lora_(down|up)_([QV])\.weight", key)
            if m is None:
                raise _shape_error(self.path, "unknown video_encoder LoRA tensor", [key])
            target = "q_proj" if m.group(3) == "Q" else "v_proj"
            ours = f"encoders.video.encoder.layers.{m.group(1)}.self_attn.{target}.lora_{'A' if m.group(2) == 'down' else 'B'}.video"
            self.plan.trainable[ours] = value
            self.use(f"video_encoder.{key}", ours)
        if width % r:
            raise _shape_error(self.path, "video_encoder LoRA", [f"inner size {r} does not divide the width {width}"])
        reduction = width // r
        self.plan.settings.update(video_lora_rank=reduction, video_lora_alpha=VIDEO_LORA_SCALE * reduction)

    # -------------------------------------------------------------- LLM
    def llm(self) -> None:
        from transformers import AutoModelForCausalLM

        tensors = _children(self.state, "llm.")
        base = {k: v for k, v in tensors.items() if ".self_attn.lora_" not in k}
        embed = base.get("model.embed_tokens.weight")
        if embed is None:
            raise ReleasedCheckpointError(f"{self.path}: no llm.model.embed_tokens.weight")
        cfg, llm_dir = self.llm_config, self.llm_config.name_or_path
        rows, width = embed.shape
        layers = 1 + max((int(k.split(".")[2]) for k in base if k.startswith("model.layers.")), default=-1)
        if width != cfg.hidden_size:
            raise ReleasedCheckpointError(f"--llm {llm_dir}: hidden size {cfg.hidden_size}, but {self.path.name}'s LLM "
                                          f"has {width}: not the LLM the model was trained on")
        if layers != cfg.num_hidden_layers:
            raise ReleasedCheckpointError(f"--llm {llm_dir}: {cfg.num_hidden_layers} layers, but {self.path.name}'s "
                                          f"LLM has {layers}: not the LLM the model was trained on")
        if rows != len(self.tokenizer):
            raise ReleasedCheckpointError(
                f"--llm {llm_dir}: vocabulary of {len(self.tokenizer)} tokens with the added {', '.join(self.added)}, but "
                f"{self.path.name}'s embedding table has {rows} rows: not the tokenizer the model was trained with")
        cfg.vocab_size = rows
        cfg.pad_token_id = self.tokenizer.pad_token_id
        with torch.device("meta"):
            expected = {k: v.shape for k, v in AutoModelForCausalLM.from_config(cfg).state_dict().items()}
        tied = bool(getattr(cfg, "tie_word_embeddings", False))
        if tied and "lm_head.weight" in base:
            if not torch.equal(base["lm_head.weight"], embed):
                raise ReleasedCheckpointError(f"--llm {llm_dir} ties the output layer to the embeddings, but "
                                              f"{self.path.name}'s llm.lm_head.weight differs from them")
            self.skip("llm.lm_head.weight", "tied to llm.model.embed_tokens.weight (the LLM ties them)")
            base.pop("lm_head.weight")
        for key in [k for k in base if k.endswith("rotary_emb.inv_freq")]:
            self.skip(f"llm.{key}", "rotary frequencies: recomputed from the LLM's config")
            base.pop(key)
        if tied:
            expected.pop("lm_head.weight", None)
        _compare(base, expected, "llm.", self.path, f"does not fit the LLM of --llm {llm_dir} (resized to {rows} rows)")
        self.backbones["llm"] = base
        for k in base:
            self.use(f"llm.{k}", f"backbones/llm: {k}")
        self.plan.settings["llm_width"] = width

    @property
    def added(self) -> list[str]:
        return [t for t in ("<pad>", *SPECIAL_TOKENS) if t in self.tokenizer.get_vocab()]

    def lora(self) -> None:
        """The LLM's q / v LoRA -> our adapters: one ("shared"), one per task, or both (Omni S, T, ST)."""
        width = self.plan.settings.pop("llm_width")
        found: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)  # adapter -> {our name: tensor}
        for key, value in _children(self.state, "llm.").items():
            if ".self_attn.lora_" not in key:
                continue
            m = re.fullmatch(r"model\.layers\.(\d+)\.self_attn\.lora_(down|up)_([QV])(_shared)?(?:\.(audio|video|audiovisual))?"
                             r"\.weight", key)
            if m is None or (m.group(4) and m.group(5)):
                raise _shape_error(self.path, "unknown LLM LoRA tensor", [f"llm.{key}"])
            adapter = TASK_OF[m.group(5)] if m.group(5) else "shared"
            target = "q_proj" if m.group(3) == "Q" else "v_proj"
            ours = f"llm.model.layers.{m.group(1)}.self_attn.{target}.lora_{'A' if m.group(2) == 'down' else 'B'}.{adapter}"
            found[adapter][ours] = value
            self.use(f"llm.{key}", ours)
        if not found:
            raise ReleasedCheckpointError(f"{self.path}: no LoRA in the LLM (llm.model.layers.*.self_attn.lora_*)")
        tasks = [a for a in found if a != "shared"]
        scheme = ("st" if "shared" in found else "t") if tasks else "ms"
        if tasks and sorted(tasks) != sorted(self.plan.tasks):
            raise ReleasedCheckpointError(f"{self.path}: task LoRA adapters for {', '.join(sorted(tasks))}, but the "
                                          f"model's tasks are {', '.join(self.plan.tasks)}")
        inner = {v.shape[0] for a in found.values() for k, v in a.items() if ".lora_A." in k}
        if len(inner) != 1 or width % next(iter(inner)):
            raise _shape_error(self.path, "LLM LoRA", [f"inner sizes {sorted(inner)} (one size dividing the hidden "
                                                       f"size {width} expected)"])
        reduction = width // inner.pop()
        for adapter in found.values():
            self.plan.trainable.update(adapter)
        self.plan.settings.update(lora_scheme=scheme, lora_convention="reduction", lora_rank=reduction,
                                  lora_alpha=self.lora_scale * reduction)
        self.plan.variant = {"omni-avsr": f"Omni-AVSR-{scheme.upper().replace('MS', 'S')}",
                             "smop": "Llama-SMoP (JEJR)"}.get(self.layout, "Llama-AVSR")

    # -------------------------------------------------------------- projectors
    def rates(self, modality: str, count: int, stacked: tuple[int, ...] | None) -> tuple[int, ...]:
        """A modality's rates: given, else from the file name, else (stacking) from the widths."""
        named = rates_from_name(self.path.name, self.needed)
        rates = self.given[modality] or named.get(modality) or stacked
        source = "given" if self.given[modality] else "file name" if named.get(modality) else "widths"
        if not rates:
            raise ReleasedCheckpointError(f"{self.path}: the {modality} rates are not in the file (average pooling): "
                                          f"give --{modality}-rates (a release's file name states them, e.g. pool-4-2)")
        if stacked and tuple(rates) != stacked:
            raise ReleasedCheckpointError(f"{self.path}: the {modality} projectors stack {list(stacked)} frames, but "
                                          f"the rates ({source}) are {list(rates)}")
        if count > 1 and len(rates) != count:
            raise ReleasedCheckpointError(f"{self.path}: {count} {modality} projectors (one per rate), but the rates "
                                          f"({source}) are {list(rates)}")
        return tuple(rates)

    def projector(self, modalities: list[str], widths: dict[str, int]) -> None:
        if self.layout == "smop":
            return self.mixture(modalities, widths)
        norms, hidden, compression = set(), set(), set()
        for m in modalities:
            name = PROJECTOR_OF[m]
            listed = _projectors(self.state, name)
            shapes = {i: _mlp_keys(layers, name if i is None else f"{name}.{i}", self.path) for i, layers in listed.items()}
            multiples = []
            for i, (d_in, h, d_out, norm) in shapes.items():
                if d_in % widths[m] or d_out != self.llm_config.hidden_size:
                    raise ReleasedCheckpointError(
                        f"{self.path}: {name}{'' if i is None else f'.{i}'} maps {d_in} -> {d_out}; the {m} encoder "
                        f"gives {widths[m]} and the LLM takes {self.llm_config.hidden_size}")
                multiples.append(d_in // widths[m])
                norms.add(norm), hidden.add(h)
            stacked = tuple(multiples) if any(k > 1 for k in multiples) else None
            compression.add("stack" if stacked else "avg-pooling")
            rates = self.rates(m, len(listed), stacked)
            self.plan.rates[m] = rates
            per_rate = None not in listed
            for i, layers in listed.items():
                stream = m if not per_rate or len(rates) == 1 else f"{m}@{rates[i]}"
                prefix = name if i is None else f"{name}.{i}"
                for key, ours in _mlp_names(layers, f"projector.mlps.{stream}").items():
                    self.plan.trainable[ours] = layers[key]
                    self.use(f"{prefix}.{key}", ours)
            self.plan.settings["rate_projectors"] = per_rate
        for what, values in (("LayerNorm", norms), ("hidden width", hidden), ("compression", compression)):
            if len(values) != 1:
                raise ReleasedCheckpointError(f"{self.path}: the projectors differ in {what} ({sorted(map(str, values))})")
        self.plan.settings.update(projector="mlp", projector_layer_norm=norms.pop(), projector_hidden=hidden.pop(),
                                  compression=compression.pop())

    def mixture(self, modalities: list[str], widths: dict[str, int]) -> None:
        """Llama-SMoP's top-k mixture: one router and one pool for audio and video (JEJR)."""
        if len(set(widths.values())) != 1:
            raise ReleasedCheckpointError(f"{self.path}: a joint mixture needs equal encoder widths, got {widths}")
        gate = self.state["audiovisual_proj.gate.weight"]  # (E, D)
        experts = defaultdict(dict)
        for key, value in _children(self.state, "audiovisual_proj.experts.").items():
            index, layer = key.split(".", 1)
            experts[int(index)][layer] = value
        if sorted(experts) != list(range(gate.shape[0])) or gate.shape[1] != widths["audio"]:
            raise ReleasedCheckpointError(f"{self.path}: the router has {gate.shape[0]} outputs over {gate.shape[1]} "
                                          f"inputs; experts {sorted(experts)}, encoder width {widths['audio']}")
        shapes = {_mlp_keys(layers, f"audiovisual_proj.experts.{e}", self.path) for e, layers in experts.items()}
        if len(shapes) != 1:
            raise ReleasedCheckpointError(f"{self.path}: the experts differ in shape: {sorted(shapes)}")
        (d_in, h, d_out, norm), = shapes
        if d_out != self.llm_config.hidden_size:
            raise ReleasedCheckpointError(f"{self.path}: the experts output {d_out}, the LLM takes "
                                          f"{self.llm_config.hidden_size}")
        for m in modalities:
            self.plan.rates[m] = self.rates(m, 1, None)
        self.plan.trainable["projector.routers.joint.weight"] = gate
        self.use("audiovisual_proj.gate.weight", "projector.routers.joint.weight")
        for e, layers in experts.items():
            for key, ours in _mlp_names(layers, f"projector.pools.joint.experts.{e}").items():
                self.plan.trainable[ours] = layers[key]
                self.use(f"audiovisual_proj.experts.{e}.{key}", ours)
        if self.top_k > gate.shape[0]:
            raise ReleasedCheckpointError(f"--top-k {self.top_k}: the mixture has {gate.shape[0]} experts")
        self.plan.settings.update(projector="smop", smop_topology="jejr", smop_experts=gate.shape[0],
                                  smop_top_k=self.top_k, projector_layer_norm=norm, projector_hidden=h,
                                  compression="avg-pooling", rate_projectors=True)

    # -------------------------------------------------------------- prompts
    def prompts(self) -> None:
        """Omni's prompt buffers must be the LLM's rows of the prompt tokens (then nothing is lost)."""
        table = self.backbones["llm"]["model.embed_tokens.weight"]
        for modality, task in TASK_OF.items():
            key = f"prompt_{modality}"
            ids = self.tokenizer(PROMPTS[task], add_special_tokens=False)["input_ids"]
            expected = table[torch.tensor(ids)][None]  # (1, P, D)
            buffer = self.state[key]
            if buffer.shape != expected.shape or not torch.equal(buffer, expected.to(buffer.dtype)):
                raise ReleasedCheckpointError(
                    f"{self.path}: {key} is not the embedding of {PROMPTS[task]!r} under --llm's tokenizer ("
                    f"shape {list(buffer.shape)}, expected {list(expected.shape)}): not the tokenizer or prompt the "
                    "model was trained with")
            self.skip(key, f"the LLM's embedding rows of {PROMPTS[task]!r} (checked equal), which the model reads")


# ------------------------------------------------------------------------------ writing


def _write_shards(folder: Path, tensors: dict[str, torch.Tensor], stem: str = "model") -> None:
    """safetensors files of about SHARD_BYTES each (+ an index when there are several), one
    shard in memory at a time."""
    from safetensors.torch import save_file

    shards: list[list[str]] = [[]]
    size = 0
    for key, value in tensors.items():
        nbytes = value.numel() * value.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    names = ([f"{stem}.safetensors"] if len(shards) == 1 else
             [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, keys in zip(names, shards):
        save_file({k: tensors[k].contiguous().clone() for k in keys}, str(folder / name), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": {k: name for name, keys in zip(names, shards) for k in keys}}
        (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=1))


def _write_backbones(tmp: Path, planner: _Planner, llm_dir: Path, source: dict) -> dict[str, Path]:
    """The backbone folders under tmp/backbones; {setting: folder relative to tmp}."""
    from avsr.models.video_encoder import write_encoder_folder

    folders = {}
    root = tmp / "backbones"
    if "llm" in planner.backbones:
        folder = root / "llm"
        folder.mkdir(parents=True)
        config = planner.llm_config
        config.dtype = str(planner.backbones["llm"]["model.embed_tokens.weight"].dtype).removeprefix("torch.")
        config.save_pretrained(folder)
        planner.tokenizer.save_pretrained(folder)
        generation = llm_dir / "generation_config.json"
        if generation.is_file():
            (folder / generation.name).write_bytes(generation.read_bytes())
        _write_shards(folder, planner.backbones["llm"])
        folders["llm"] = folder
    if "whisper" in planner.backbones:
        folder = root / "whisper"
        folder.mkdir(parents=True)
        planner.whisper.save_pretrained(folder)
        _write_shards(folder, planner.backbones["whisper"])
        folders["audio_encoder"] = folder
    if "avhubert" in planner.backbones:
        folder = root / "avhubert"
        folder.mkdir(parents=True)
        write_encoder_folder(folder, {k: v.contiguous().clone() for k, v in planner.backbones["avhubert"].items()},
                             planner.video_cfg, {"source": FOLDER_SOURCE, "licence": AVHUBERT_LICENCE,
                                                 "imported_from": source})
        folders["video_encoder"] = folder
    return {k: v.relative_to(tmp) for k, v in folders.items()}


def _check_trainable(cfg: AVSRConfig, planner: _Planner) -> AVSRModel:
    """Our model built from `cfg` on the meta device (returned) must have exactly the trainable
    tensors planned, with the same shapes: the names and sizes the import wrote are the model's."""
    from transformers import AutoModelForCausalLM
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from avsr.models.audio_encoder import WhisperAudioEncoder
    from avsr.models.video_encoder import VideoEncoder

    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(planner.llm_config)
        audio = WhisperAudioEncoder(WhisperEncoder(planner.whisper), planner.whisper.num_mel_bins) if planner.whisper else None
        video = VideoEncoder(planner.video_cfg) if planner.video_cfg else None
        model = AVSRModel(cfg, audio, video, llm, planner.tokenizer)
    expected = {k: p.shape for k, p in model.named_parameters() if p.requires_grad}
    _compare(planner.plan.trainable, expected, "", planner.path, "the planned weights do not fit avsr's model (a bug)")
    return model


def _early_checks(file: Path, llm_dir: Path, out: Path):
    """Everything that fails fast, before the file is read: the file, --llm (config and tokenizer), --out."""
    from transformers import AutoConfig, AutoTokenizer

    if not file.is_file():
        raise ReleasedCheckpointError(f"{file}: {'not a file' if file.exists() else 'no such file'}")
    if file.stat().st_size == 0:
        raise ReleasedCheckpointError(f"{file}: empty file")
    if not (llm_dir / "config.json").is_file():
        raise ReleasedCheckpointError(f"--llm {llm_dir}: no config.json there (the base LLM's folder, e.g. "
                                      "Llama-3.2-1B saved with save_pretrained; its weights are not needed)")
    try:
        config = AutoConfig.from_pretrained(str(llm_dir), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ReleasedCheckpointError(f"--llm {llm_dir}: config.json unreadable ({str(err).splitlines()[0]})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(llm_dir), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ReleasedCheckpointError(f"--llm {llm_dir}: no usable tokenizer there ({str(err).splitlines()[0]}); the "
                                      "folder needs the base LLM's tokenizer files") from None
    # avsr.io's rule: a new or empty folder; never an input, a checkpoint (an earlier import included:
    # remove it yourself to import again) or anything avsr did not write
    check_output(out, "import", inputs=(file, llm_dir), folder=True)
    return config, tokenizer


def import_checkpoint(file: str | Path, llm: str | Path, out: str | Path, fmt: str = "auto",
                      audio_rates=None, video_rates=None, lora_scale: float = LORA_SCALE,
                      top_k: int = SMOP_TOP_K) -> tuple[Path, dict]:
    """Import `file` (see the module docstring) into the checkpoint folder `out`; (out, report)."""
    file, llm_dir, out = Path(file), Path(llm), Path(out)
    if fmt not in FORMATS:
        raise ReleasedCheckpointError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    llm_config, tokenizer = _early_checks(file, llm_dir, out)
    added = {}
    if tokenizer.pad_token is None:  # the authors add <pad> to Llama (lightning_OmniAVSR.py L83-L85)
        added["pad_token"] = "<pad>"
    tokenizer.add_special_tokens({**added, "additional_special_tokens": list(SPECIAL_TOKENS)})
    state = read_state(file)
    layout = detect_layout(state, file)
    if fmt not in ("auto", layout):
        raise ReleasedCheckpointError(f"--format {fmt}: {file.name}'s keys are those of {layout}")
    planner = _Planner(state, file, layout, llm_config, tokenizer, audio_rates, video_rates, lora_scale, top_k)
    plan = planner.run()
    rates = {f"{m}_rates": plan.rates.get(m, (1,)) for m in ("audio", "video")}
    modal = {m: m in plan.rates for m in ("audio", "video")}
    source = {"file": file.name, "sha256": sha256_file(file), "size_bytes": file.stat().st_size}
    final = out.expanduser().resolve()
    with atomic_folder(out) as tmp:
        folders = _write_backbones(tmp, planner, llm_dir, source)
        cfg = AVSRConfig(**{k: str(final / v) for k, v in folders.items()}, **rates, tasks=plan.tasks,
                         lora_targets=("q_proj", "v_proj"), pad_audio_to_30s=modal["audio"],
                         audio_znorm=modal["audio"], video_trim=modal["video"] and len(plan.rates["video"]) == 1,
                         modality_tokens="llm", **plan.settings)
        model = _check_trainable(cfg, planner)
        record = {**source, "layout": layout, "variant": plan.variant, "llm_folder": str(llm_dir),
                  "tasks": list(cfg.tasks), "rates": {m: list(r) for m, r in plan.rates.items()},
                  "adapters": {scale_name(t, p): list(adapter_names(cfg.lora_scheme, t, p))
                               for t in cfg.tasks for p in model.pairs(t)},
                  "lora_scale": lora_scale, "authors_decoding": {
                      **AUTHORS_DECODING, "note": "the authors decode with transformers' generate and the LLM's "
                      "generation_config (Llama 3.x base: do_sample, temperature 0.6, top-p 0.9: beam sampling); "
                      "avsr decodes with deterministic beam search of the same width"},
                  "authors_wer_normalisation": "lowercase, split on whitespace (avsr's also drops punctuation)",
                  "tensors": {"used": len(plan.used), "not_needed": plan.not_needed}}
        trainable = {k: v.contiguous().clone() for k, v in plan.trainable.items()}
        write_checkpoint_files(tmp, out, trainable, cfg, {"imported": record, "decoding": dict(AUTHORS_DECODING)})
        report = {**record, "num_beams": AUTHORS_DECODING["num_beams"], "used": plan.used}
        (tmp / REPORT).write_text(json.dumps(report, indent=1))
        marker = {"written_by": "avsr import", "entries": sorted([CONFIG, WEIGHTS, REPORT, "backbones"])}
        (tmp / RUN_MARKER).write_text(json.dumps(marker, indent=1))
    return out, report

