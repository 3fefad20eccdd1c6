"""Files in the layout of the authors' released checkpoints, with tiny sizes and random weights,
built module by module as the authors' code builds its model (file and line cited; our own
code), and written as their averaging script writes them: the state dict's `model.` entries
(prefix stripped) `torch.save`d as a plain dict (Omni-AVSR `utils/avg_checkpoints.py` L14-L46).

Sources: [L] umbertocappellazzo/Llama-AVSR @410842d, [O] umbertocappellazzo/Omni-AVSR @7de6be2,
[S] umbertocappellazzo/Dr-SHAP-AV @4d07a10.

The fixture keeps the modules it was built from, so a test can run the authors' forward
(tests/test_import.py) on exactly the weights the file holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from conftest import TEXTS

AV_SPECIALS = ["<audio>", "</audio>", "<video>", "</video>"]

@dataclass(frozen=True)
class Sizes:
    """Backbone sizes. Encoder widths have a known head count: the import reads heads from them."""
    width: int = 768  # Whisper and AV-HuBERT
    heads: int = 12
    whisper_layers: int = 1
    whisper_ffn: int = 64
    avhubert: dict = field(default_factory=lambda: dict(layers=2, ffn_dim=64, frontend_channels=8,
                                                        resnet_channels=(8, 8, 16, 16), resnet_blocks=(1, 1, 1, 1),
                                                        conv_pos=8, conv_pos_groups=4))
    projector_hidden: int = 32
    lora_reduction: int = 16  # --reduction_lora / --rank; --alpha is a eighth of it (scale 0.125)
    llm: str | None = None  # a preset of avsr.models.presets (None: a tiny Llama on the small LM's tokenizer)


TINY = Sizes()
# benchmarks/imported_speed.py: Whisper-medium.en, AV-HuBERT Large, Llama 3.2-1B (its tokenizer stood in for)
FULL = Sizes(1024, 16, 24, 4096, dict(layers=24, ffn_dim=4096), 2048, 32, "Llama-3.2-1B")
LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1)
PROMPT_OF = {"audio": "Transcribe speech to text.", "video": "Transcribe video to text.",
             "audiovisual": "Transcribe speech and video to text."}  # [O] train_OmniAVSR.py defaults


@dataclass
class Spec:
    """One layout: which modalities, how compressed, which LoRA, which projector."""
    layout: str  # "llama-avsr", "omni-avsr", "smop"
    modalities: tuple[str, ...]  # of the authors' model: ("audio",), ("video",), ("audio", "video")
    audio_rates: tuple[int, ...] = ()
    video_rates: tuple[int, ...] = ()
    compression: str = "avg-pooling"
    layer_norm: bool = False  # projector LayerNorm weights in the file
    task_lora: bool = False  # Omni T / ST: one LLM adapter per task
    shared_lora: bool = False  # Omni ST: + a shared adapter (Omni S and Llama-AVSR: the plain one only)
    video_lora: bool = False  # LoRA inside AV-HuBERT
    tied: bool = True  # Llama 3.2-1B / 3B tie the output layer to the embeddings; 3.1-8B does not
    experts: int = 0  # SMoP


SPECS = {
    # Llama-AVSR 8B model zoo, as in [L] README: ASR stack 3, VSR stack 3 + AV-HuBERT LoRA, AVSR stack 4 / 2
    "llama-avsr-asr": Spec("llama-avsr", ("audio",), (3,), compression="stack", tied=False),
    "llama-avsr-vsr": Spec("llama-avsr", ("video",), video_rates=(3,), compression="stack", video_lora=True,
                           tied=False),
    "llama-avsr-avsr": Spec("llama-avsr", ("audio", "video"), (4,), (2,), compression="stack", tied=False),
    # Llama-AVSR 1B of Dr-SHAP-AV: average pooling 4 / 2, projector LayerNorm
    "llama-avsr-1b-ln": Spec("llama-avsr", ("audio", "video"), (4,), (2,), layer_norm=True),
    # Omni-AVSR S, T, ST: rates {4, 16} x {2, 5}, per-rate projectors without LayerNorm (the `bias` bug),
    # AV-HuBERT LoRA; S with LayerNorm too (per-rate projectors with LayerNorm, [O] modeling_LlamaAVSR.py L101)
    "omni-s": Spec("omni-avsr", ("audio", "video"), (4, 16), (2, 5), video_lora=True),
    "omni-s-ln": Spec("omni-avsr", ("audio", "video"), (4, 16), (2, 5), video_lora=True, layer_norm=True),
    "omni-t": Spec("omni-avsr", ("audio", "video"), (4, 16), (2, 5), video_lora=True, task_lora=True),
    "omni-st": Spec("omni-avsr", ("audio", "video"), (4, 16), (2, 5), video_lora=True, task_lora=True,
                    shared_lora=True),
    # Llama-SMoP 1B: average pooling 4 / 2, 4 experts, top-2 (Dr-SHAP-AV README)
    "smop": Spec("smop", ("audio", "video"), (4,), (2,), experts=4),
}
# The file names of the releases (their rates for average pooling are in them)
FILE_NAMES = {"llama-avsr-asr": "ASR_Whisper-M_Llama3.1-8B_lrs3vox_down3_seed42.pth",
              "llama-avsr-vsr": "VSR_AVH-L_Llama3.1-8B_lrs3vox_down3_seed42.pth",
              "llama-avsr-avsr": "AVSR_Whisper-M_AVH-L_Llama3.1-8B_lrs3vox_Adown4_Vdown2_seed42.pth",
              "llama-avsr-1b-ln": "LRS3_audiovisual_avg-pooling_AVH-Large_Whisper-M_Llama3.2-1B_pool-4-2_LN_seed7.pth",
              "omni-s": "LRS3_OmniAVSR_Matry_weights_1-15-1_avg-pooling_Whisper-M_Llama3.2-1B_LoRA_"
                        "pool-audio4-16_video2-5_LN_seed7.pth",
              "omni-s-ln": "omni_s_with_layernorm_pool-audio4-16_video2-5.pth",
              "omni-t": "LRS3_OmniAVSR_Matry_weights_1-15-1_avg-pooling_Whisper-M_Llama3.2-1B_LoRA_task-specific_"
                        "pool-audio4-16_video2-5_LN_seed7.pth",
              "omni-st": "LRS3_OmniAVSR_Matry_weights_1-15-1_avg-pooling_Whisper-M_Llama3.2-1B_LoRA_task-specific_"
                         "sharedLoRA_pool-audio4-16_video2-5_LN_seed7.pth",
              "smop": "LRS3_SMoP_audiovisual_avg-pooling_AVH-Large_Whisper-M_Llama1B_pool-4-2_seed7.pth"}
AVH_RANK, AVH_SCALE = 16, 2  # [L] modeling_AVSRLLM.py L108-L109


def base_llm_folder(folder: Path, tied: bool = True, preset: str | None = None) -> Path:
    """The `--llm` folder: a Llama-3-style config and tokenizer (no weights): tiny, or a preset's
    config with a stand-in word-level tokenizer of its vocabulary size (BOS / EOS at Llama 3's ids)."""
    from transformers import LlamaConfig

    if preset is None:
        from avsr.backbones.small_lm import train_tokenizer

        tokenizer = train_tokenizer(TEXTS, 320)
        LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    tie_word_embeddings=tied, initializer_range=0.2, **LLM).save_pretrained(folder)
    else:
        from avsr.models.presets import LLMS

        config = LLMS[preset].config()
        tokenizer = word_tokenizer(config.vocab_size, config.bos_token_id, config.eos_token_id)
        config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def word_tokenizer(size: int, bos: int, eos: int):
    """`size` words ("w0" ...) with BOS and EOS at the given ids: a stand-in of a large vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(size)]
    words[bos], words[eos] = "<|begin_of_text|>", "<|end_of_text|>"
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="w0", bos_token=words[bos], eos_token=words[eos])


def authors_tokenizer(llm_dir: Path):
    """The tokenizer as the authors set it up: <pad> and the four delimiters added, in this order
    ([O] Omni_AVSR/lightning_OmniAVSR.py L84)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(llm_dir))
    tok.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": AV_SPECIALS})
    return tok


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random values everywhere (trained weights are not at their init: zero LoRA downs, unit norms
    and zero biases would hide mistakes); BatchNorm variances and weight-norm gains stay positive.
    Only what a state dict holds: computed buffers (rotary frequencies) stay as they are."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():  # what a file holds (not rotary tables)
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen)
            if name.endswith(("running_var", "weight_g")):
                t.copy_(0.5 + noise.abs())
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(0.1 * noise)
            elif t.dim() == 1:  # norm / PReLU weights
                t.copy_(1.0 + 0.1 * noise)
            else:
                t.copy_(noise / math.sqrt(t.shape[-1] if t.dim() == 2 else t[0].numel()))
    return module


def lora_pair(d_in: int, d_out: int, reduction: int) -> tuple[nn.Linear, nn.Linear]:
    """(down, up) as the authors build them: bias-free, inner size round(d_in / reduction)
    ([L] models/Llama_LoRA.py L39-L50)."""
    inner = round(d_in / reduction)
    return nn.Linear(d_in, inner, bias=False), nn.Linear(inner, d_out, bias=False)


def mlp(d_in: int, hidden: int, d_out: int, layer_norm: bool, bias_bug: bool = False) -> nn.Sequential:
    """The projector ([L] modeling_AVSRLLM.py L81-L89); `bias_bug`: Omni's per-rate form, which
    passes the LayerNorm as the second Linear's bias argument ([O] modeling_OmniAVSR.py L104)."""
    if bias_bug:
        return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out, nn.LayerNorm(d_out)))
    layers = [nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out)]
    return nn.Sequential(*layers, *([nn.LayerNorm(d_out)] if layer_norm else []))


@dataclass
class Fixture:
    """A written file and the modules behind it."""
    name: str
    spec: Spec
    path: Path
    llm_dir: Path
    tokenizer: object
    llm: nn.Module
    llm_lora: dict = field(default_factory=dict)  # layer -> adapter ("plain", task or "shared") -> {Q: (down, up), V: ...}
    lora_scale: float = 0.125  # --alpha / --rank of every release
    whisper: nn.Module | None = None
    avhubert: nn.Module | None = None
    avh_lora: dict = field(default_factory=dict)  # layer -> {Q: (down, up), V: (down, up)}
    projectors: dict = field(default_factory=dict)  # "audio" / "video" -> Sequential or ModuleList
    moe: nn.Module | None = None  # SMoP: .gate, .experts
    prompts: dict = field(default_factory=dict)  # Omni: modality -> (1, P, D) buffer
    cache: dict = field(default_factory=dict)  # the reference's Whisper outputs, per clip


def build(name: str, folder: Path, seed: int = 0, dtype: torch.dtype = torch.float32, sizes: Sizes = TINY) -> Fixture:
    """Write the fixture `name` of SPECS into `folder` (the file and the `--llm` folder); the modules
    are built in `dtype` (full size in bfloat16, as the authors train: half the memory)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return _build(name, folder, seed, dtype, sizes)
    finally:
        torch.set_default_dtype(default)


def _build(name: str, folder: Path, seed: int, dtype: torch.dtype, sizes: Sizes) -> Fixture:
    from transformers import AutoConfig, LlamaForCausalLM, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from avsr.models.video_encoder import VideoEncoder, VideoEncoderConfig

    spec = SPECS[name]
    folder.mkdir(parents=True, exist_ok=True)
    llm_dir = base_llm_folder(folder / "base-llm", spec.tied, sizes.llm)
    width, ffn = sizes.width, sizes.whisper_ffn
    tok = authors_tokenizer(llm_dir)
    torch.manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    fx = Fixture(name, spec, folder / FILE_NAMES[name], llm_dir, tok, None)

    if "audio" in spec.modalities:  # [L] modeling_AVSRLLM.py L57: WhisperModel.from_pretrained(...).encoder
        fx.whisper = randomise(WhisperEncoder(WhisperConfig(d_model=width, encoder_layers=sizes.whisper_layers,
                                                             encoder_attention_heads=sizes.heads, encoder_ffn_dim=ffn,
                                                             num_mel_bins=80)), seed + 1).eval()
        state.update({f"audio_encoder.{k}": v for k, v in fx.whisper.state_dict().items()})
    if "video" in spec.modalities:  # fairseq AVHubertModel (our port has its names), + its extra tensors
        cfg = VideoEncoderConfig.tiny(embed_dim=width, heads=sizes.heads, frontend_channels=64,
                                      resnet_channels=(64, 128, 256, 512), resnet_blocks=(2, 2, 2, 2),
                                      conv_pos=128, conv_pos_groups=16)
        cfg = VideoEncoderConfig(**{**cfg.__dict__, **sizes.avhubert})
        fx.avhubert = randomise(VideoEncoder(cfg), seed + 2).eval()
        avh = dict(fx.avhubert.state_dict())
        extra = {"feature_extractor_audio.proj.weight": torch.randn(width, 104),
                 "feature_extractor_audio.proj.bias": torch.randn(width), "mask_emb": torch.randn(width),
                 "label_embs_concat": torch.randn(10, 32), "final_proj.weight": torch.randn(32, width),
                 "final_proj.bias": torch.randn(32)}
        avh.update(extra)
        if spec.video_lora:  # [L] modeling_AVSRLLM.py L104-L119: rank 16 (reduction), scaling 2, on q and v
            for i in range(cfg.layers):
                pairs = {m: randomise(nn.ModuleList(lora_pair(width, width, AVH_RANK)), seed + 10 + i)
                         for m in "QV"}
                fx.avh_lora[i] = {m: tuple(p) for m, p in pairs.items()}
                for m, (down, up) in fx.avh_lora[i].items():
                    avh[f"encoder.layers.{i}.self_attn.lora_down_{m}.weight"] = down.weight
                    avh[f"encoder.layers.{i}.self_attn.lora_up_{m}.weight"] = up.weight
        state.update({f"video_encoder.{k}": v for k, v in avh.items()})

    config = AutoConfig.from_pretrained(str(llm_dir))
    hidden = config.hidden_size
    rates = {"audio": spec.audio_rates, "video": spec.video_rates}
    if spec.layout == "smop":  # [S] scripts/modeling_LlamaSMoP.py L28-L36, L205
        moe = nn.Module()
        moe.gate = nn.Linear(width, spec.experts, bias=False)
        moe.experts = nn.ModuleList([mlp(width, sizes.projector_hidden, hidden, True) for _ in range(spec.experts)])
        fx.moe = randomise(moe, seed + 3)
        state.update({f"audiovisual_proj.{k}": v for k, v in fx.moe.state_dict().items()})
    else:
        for m in spec.modalities:
            d_in = [width * (r if spec.compression == "stack" else 1) for r in rates[m]]
            if spec.layout == "omni-avsr":  # a ModuleList, one projector per rate ([O] modeling_OmniAVSR.py L94-L104)
                proj = nn.ModuleList([mlp(d, sizes.projector_hidden, hidden, spec.layer_norm, bias_bug=not spec.layer_norm)
                                      for d in d_in])
            else:
                proj = mlp(d_in[0], sizes.projector_hidden, hidden, spec.layer_norm)
            fx.projectors[m] = randomise(proj, seed + 4 + len(fx.projectors))
            state.update({f"{m}_proj.{k}": v for k, v in fx.projectors[m].state_dict().items()})

    # The LLM, resized for the added tokens ([L] modeling_AVSRLLM.py L199), with LoRA on q and v
    fx.llm = randomise(LlamaForCausalLM(config), seed + 5).eval()
    fx.llm.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():  # the new rows random too, and the tie kept
        fx.llm.get_input_embeddings().weight[-5:] = torch.randn(5, hidden)
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)  # hid // 4, IS_LLAMA3
    adapters = (["audio", "video", "audiovisual"] if spec.task_lora else ["plain"]) + (["shared"] if spec.shared_lora else [])
    for i in range(config.num_hidden_layers):
        fx.llm_lora[i] = {}
        for a in adapters:  # [O] Omni_AVSR/Llama_LoRA.py L124-L192
            q = randomise(nn.ModuleList(lora_pair(hidden, hidden, sizes.lora_reduction)), seed + 100 + 10 * i + len(fx.llm_lora[i]))
            v = randomise(nn.ModuleList(lora_pair(hidden, kv, sizes.lora_reduction)), seed + 500 + 10 * i + len(fx.llm_lora[i]))
            fx.llm_lora[i][a] = {"Q": tuple(q), "V": tuple(v)}
            for m, (down, up) in fx.llm_lora[i][a].items():
                suffix = {"plain": "", "shared": "_shared"}.get(a, "")
                task = "" if a in ("plain", "shared") else f".{a}"
                state[f"llm.model.layers.{i}.self_attn.lora_down_{m}{suffix}{task}.weight"] = down.weight
                state[f"llm.model.layers.{i}.self_attn.lora_up_{m}{suffix}{task}.weight"] = up.weight
    state.update({f"llm.{k}": v for k, v in fx.llm.state_dict().items()})

    if spec.layout == "omni-avsr":  # [O] modeling_OmniAVSR.py L218-L221: BOS ... EOS of the template, cut [1:-1]
        for m, prompt in PROMPT_OF.items():
            ids = [tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"], tok.eos_token_id]
            with torch.no_grad():
                fx.prompts[m] = fx.llm.model.embed_tokens(torch.tensor([ids])[:, 1:-1])
            state[f"prompt_{m}"] = fx.prompts[m]

    torch.save({k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in state.items()}, fx.path)
    return fx
