"""`avsr train RECIPE --dry-run`: a configuration's full-size model, built on the meta device and
counted by component, with nothing loaded, downloaded or trained.

The backbones come from their presets (avsr.models.presets: a setting's folder name, or a
local folder's config.json): the transformers causal LM from its config, `WhisperAudioEncoder`
and `VideoEncoder` from theirs, all under `torch.device("meta")`, so every tensor has a shape
and no storage (an 8B model costs no memory). They are wrapped by the same `AVSRModel` that
training builds, so the counts are those of the real model: LoRA adapters, projectors,
new-token embeddings, frozen parts.

Counts per component (`count_parameters`): trainable, frozen, and active: what one token uses
of a trainable part: all of an MLP projector, a router and its top-k experts of a sparse
mixture, the LLM LoRA adapters that one forward runs (one of a per-scale or per-task bank,
two with a shared adapter on top), all of the video-encoder LoRA. The total active count is
the costliest token's path: the forward's LLM adapters and the new-token embeddings, plus the
encoder LoRA and projector path of the modality that costs most.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch

from avsr.models.avsr_model import SPECIAL_TOKENS, AVSRConfig, AVSRModel
from avsr.models.lora import LoRALinear
from avsr.models.presets import PresetError, resolve
from avsr.models.tasks import MODALITIES, PROMPTS, adapter_names, modalities_of

UNKNOWN = "[UNK]"


def stand_in_tokenizer(tokens: dict, modality_tokens: bool = False):
    """A real, tiny in-memory tokenizer standing in for the LLM's.

    AVSRModel needs a tokenizer for its special tokens (<audio> ... </video>, and <pad> when the
    LLM has none), the BOS/EOS ids and the prompts' ids; the parameters it creates from them
    are the new-token embedding rows, one per added token. Reading the real tokenizer would
    need the model folder, so this one is built from scratch (`tokenizers` word-level model
    over the prompt words) with the real one's BOS / EOS / pad tokens present or absent as
    `tokens` (the preset's) says: the model then adds, and counts, exactly the new tokens it
    would add to the real tokenizer. Its ids are small and say nothing about the real ones.
    With `modality_tokens` the vocabulary holds <audio> ... </video> and <pad> already, as the
    LLM folder of an imported checkpoint does (`modality_tokens: llm`).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace()
    pad = tokens.get("pad") or ("<pad>" if modality_tokens else None)
    specials = [t for t in (tokens.get("bos"), tokens.get("eos"), pad) if t]
    specials += list(SPECIAL_TOKENS) if modality_tokens else []
    words = [w for prompt in PROMPTS.values() for w, _ in split.pre_tokenize_str(prompt)]
    vocab = {w: i for i, w in enumerate(dict.fromkeys([UNKNOWN, *specials, *words]))}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNKNOWN))
    core.pre_tokenizer = split
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token=UNKNOWN, bos_token=tokens.get("bos"),
                                   eos_token=tokens.get("eos"), pad_token=pad)


def backbone_presets(cfg: AVSRConfig) -> dict:
    """{setting: preset} of the backbones the tasks need (errors name the setting)."""
    needs = modalities_of(cfg.tasks)
    found = {"llm": resolve("llm", cfg.llm)}
    for m in ("audio", "video"):
        if m in needs:
            found[f"{m}_encoder"] = resolve(f"{m}_encoder", getattr(cfg, f"{m}_encoder"))
    return found


def build_on_meta(cfg: AVSRConfig, presets: dict | None = None) -> tuple[AVSRModel, dict]:
    """The configuration's AVSRModel with full-size backbones on the meta device, and the presets
    (`presets`: {setting: preset} to use instead of those the settings name)."""
    from transformers import AutoModelForCausalLM
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from avsr.models.audio_encoder import WhisperAudioEncoder
    from avsr.models.video_encoder import VideoEncoder

    presets = presets or backbone_presets(cfg)
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(presets["llm"].config())
        audio = video = None
        if "audio_encoder" in presets:
            whisper = presets["audio_encoder"].config()
            audio = WhisperAudioEncoder(WhisperEncoder(whisper), whisper.num_mel_bins, cfg.pad_audio_to_30s)
        if "video_encoder" in presets:
            video = VideoEncoder(presets["video_encoder"].config())
        model = AVSRModel(cfg, audio, video, llm, stand_in_tokenizer(presets["llm"].tokens, cfg.modality_tokens == "llm"))
    return model, presets


def check_on_meta(cfg: AVSRConfig, presets: dict | None = None) -> None:
    """Refuse, before any weights load, what only the backbones' architectures tell: the model is
    built on the meta device from their config.json files (or `presets`: the architectures a
    pipeline is about to make), so a config.json value of the wrong type (PresetError), a LoRA
    target the LLM lacks or a bottleneck wider than its layers (SettingError) is named in a moment.
    A fairseq .pt video encoder that no preset names keeps its architecture inside its weights:
    such a configuration is checked when it loads."""
    video = cfg.video_encoder if "video" in modalities_of(cfg.tasks) else None
    if presets is None and video and Path(video).is_file():
        try:
            resolve("video_encoder", video)
        except PresetError:
            return
    build_on_meta(cfg, presets)


# ------------------------------------------------------------------------------ counting


def _component(name: str) -> str:
    """The component a parameter belongs to, from its name in AVSRModel."""
    if ".lora_A." in name or ".lora_B." in name:
        return "llm_lora" if name.startswith("llm.") else name.split(".")[1] + "_lora"  # encoders.<m>...
    if name.startswith("projector."):
        return ".".join(name.split(".")[:3])  # projector.mlps.audio@4, projector.pools.joint, ...
    if name == "new_token_embed":
        return "new_tokens"
    if name.startswith("llm."):
        return "llm"
    if name.startswith("encoders."):
        return name.split(".")[1] + "_encoder"
    return "other"


def _lora_facts(module: torch.nn.Module) -> dict:
    """Targets, bottleneck, scale and per-adapter sizes of the LoRA layers inside `module`."""
    layers = [(name.rsplit(".", 1)[-1], m) for name, m in module.named_modules() if isinstance(m, LoRALinear)]
    sizes: dict[str, int] = defaultdict(int)
    for _, layer in layers:
        for adapter in layer.lora_A:
            sizes[adapter] += layer.lora_A[adapter].numel() + layer.lora_B[adapter].numel()
    first = layers[0][1]
    return {"targets": sorted({t for t, _ in layers}), "layers": len(layers),
            "rank": int(next(iter(first.lora_A.values())).shape[0]), "scale": float(first.scale),
            "adapters": dict(sizes)}


def _projector_paths(model: AVSRModel, rows: dict) -> dict[str, int]:
    """{modality: trainable projector parameters one of its tokens runs through}."""
    proj, cfg = model.projector, model.cfg
    paths = {}
    for m in model.encoders:
        if hasattr(proj, "mlps"):  # one MLP per stream (modality, or modality at a rate)
            paths[m] = max(rows[f"projector.mlps.{s}"]["trainable"] for s in proj.mlps
                           if s == m or s.startswith(f"{m}@"))
        elif hasattr(proj, "pools"):  # sparse mixture: alignment, router, top-k experts of its pool
            pool = rows[f"projector.pools.{proj.pool_of[m]}"]["trainable"] // cfg.smop_experts
            paths[m] = (rows.get(f"projector.align.{m}", {}).get("trainable", 0)
                        + rows[f"projector.routers.{proj.router_of[m]}"]["trainable"] + cfg.smop_top_k * pool)
        else:
            paths[m] = proj.active_parameters()
    return paths


def count_parameters(model: AVSRModel) -> dict:
    """Components (trainable / active / frozen) and totals of a built AVSRModel; see the module
    docstring for "active"."""
    cfg = model.cfg
    rows: dict[str, dict] = {}
    for name, p in model.named_parameters():  # each tensor once, tied embeddings included
        row = rows.setdefault(_component(name), {"trainable": 0, "frozen": 0})
        row["trainable" if p.requires_grad else "frozen"] += p.numel()
    for row in rows.values():
        row["active"] = row["trainable"]
    lora = _lora_facts(model.llm)
    forwards = [adapter_names(cfg.lora_scheme, t, pair) for t in cfg.tasks for pair in model.pairs(t)]
    lora["per_forward"] = max(len(names) for names in forwards)
    rows["llm_lora"]["active"] = max(sum(lora["adapters"][n] for n in names) for names in forwards)
    for key, row in rows.items():
        if key.startswith("projector.pools."):
            row["active"] = cfg.smop_top_k * row["trainable"] // cfg.smop_experts
    paths = _projector_paths(model, rows)
    encoder_lora = {m: rows.get(f"{m}_lora", {}).get("trainable", 0) for m in model.encoders}
    used = modalities_of(cfg.tasks)
    costliest = max(paths[m] + encoder_lora[m] for m in used)
    trainable = sum(r["trainable"] for r in rows.values())
    frozen = sum(r["frozen"] for r in rows.values())
    totals = {"trainable": trainable, "active": rows["llm_lora"]["active"] + rows["new_tokens"]["trainable"] + costliest,
              "frozen": frozen, "total": trainable + frozen,
              "projector": sum(r["trainable"] for k, r in rows.items() if k.startswith("projector.")),
              "projector_active": max(paths[m] for m in used)}
    video_lora = _lora_facts(model.encoders["video"]) if "video_lora" in rows else None
    return {"rows": rows, "lora": lora, "video_lora": video_lora, "totals": totals}


def _fmt(n: int | None) -> str:
    if n is None:
        return "-"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def _label(key: str, model: AVSRModel, counts: dict, presets: dict) -> str:
    cfg = model.cfg
    if key == "llm_lora":
        lora = counts["lora"]
        n = len(lora["adapters"])
        return f"LLM LoRA ({n} adapter{'s' if n > 1 else ''}, {lora['per_forward']} per forward)"
    if key.endswith("_lora"):
        return f"{key.split('_')[0]}-encoder LoRA"
    if key.startswith("projector."):
        _, kind, name = key.split(".", 2)
        if kind == "pools":
            return f"projector experts [{name}] ({cfg.smop_experts}, top-{cfg.smop_top_k})"
        return {"mlps": f"projector MLP [{name}]", "routers": f"projector router [{name}]",
                "align": f"projector width alignment [{name}]"}.get(kind, key)
    if key == "new_tokens":
        n, d = model.new_token_embed.shape
        return f"new-token embeddings ({n} x {d})"
    if key == "llm":
        return f"LLM (frozen): {presets['llm'].name}"
    if key.endswith("_encoder"):
        return f"{key.split('_')[0]} encoder (frozen): {presets[key].name}"
    return key


ORDER = ("llm_lora", "video_lora", "audio_lora", "projector.", "new_tokens", "llm", "audio_encoder", "video_encoder")


def report(cfg: AVSRConfig) -> dict:
    """The dry run of a model configuration, as a JSON-ready dict."""
    model, presets = build_on_meta(cfg)
    counts = count_parameters(model)
    components = []
    for prefix in ORDER:
        for key in [k for k in counts["rows"] if k == prefix or (prefix.endswith(".") and k.startswith(prefix))]:
            row = counts["rows"][key]
            components.append({"component": key, "label": _label(key, model, counts, presets),
                               "trainable": row["trainable"], "active": row["active"] if row["trainable"] else None,
                               "frozen": row["frozen"]})
    listed = {c["component"] for c in components}
    components += [{"component": k, "label": k, **r} for k, r in counts["rows"].items() if k not in listed]
    return {"backbones": {key: {"setting": getattr(cfg, key), "preset": p.name, "architecture": p.describe()}
                          for key, p in presets.items()},
            "tasks": list(cfg.tasks),
            "rates": {m: list(model.rates[m]) for m in ("audio", "video")
                      if any(m in MODALITIES[t] for t in cfg.tasks)},
            "compression": cfg.compression, "lora": {"scheme": cfg.lora_scheme, **counts["lora"]},
            "video_lora": counts["video_lora"], "new_tokens": list(model.special),
            "components": components, "totals": counts["totals"]}


def format_report(result: dict, title: str = "", training: dict | None = None) -> str:
    """The dry run as a text table (numbers rounded; `--json` gives them exactly)."""
    lines = [title] if title else []
    for key, b in result["backbones"].items():
        lines.append(f"  {key:<14} {b['setting']} -> {b['architecture']}")
    rates = ", ".join(f"{m} {'/'.join(map(str, r))}" for m, r in result["rates"].items())
    lines.append(f"  tasks {', '.join(result['tasks'])}; rates {rates} ({result['compression']})")
    lora = result["lora"]
    lines.append(f"  LLM LoRA on {', '.join(lora['targets'])}: r {lora['rank']}, scale {lora['scale']:g}; scheme "
                 f"{lora['scheme']}, adapters {', '.join(lora['adapters'])}")
    if result["video_lora"]:
        v = result["video_lora"]
        lines.append(f"  video-encoder LoRA on {', '.join(v['targets'])}: r {v['rank']}, scale {v['scale']:g}")
    lines.append(f"  new tokens: {' '.join(result['new_tokens'])}")
    if training:
        lines.append("  training: " + ", ".join(f"{k} {v}" for k, v in training.items()))
    width = max(len(c["label"]) for c in result["components"]) + 2
    lines += ["", f"{'component':<{width}}{'trainable':>12}{'active':>12}{'frozen':>12}"]
    for c in result["components"]:
        lines.append(f"{c['label']:<{width}}{_fmt(c['trainable'] or None):>12}{_fmt(c['active']):>12}"
                     f"{_fmt(c['frozen'] or None):>12}")
    t = result["totals"]
    lines += [f"{'total':<{width}}{_fmt(t['trainable']):>12}{_fmt(t['active']):>12}{_fmt(t['frozen']):>12}", "",
              f"trainable {t['trainable']:,} of {t['total']:,} parameters; active per token {t['active']:,}; "
              f"projectors {t['projector']:,} (per token {t['projector_active']:,})"]
    return "\n".join(lines)
