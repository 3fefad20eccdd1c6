"""The papers' configurations as recipes: `avsr train RECIPE --dry-run` builds each full-size model
on the meta device (no memory, no folder) and its parameter counts match the papers' within 1%;
the LoRA reduction convention and the LoRA inside the video encoder work on tiny models."""

import json

import pytest
import torch
from conftest import make_batch, run_cli, tiny_model

from avsr.models.avsr_model import AVSRConfig, AVSRModel, lora_size
from avsr.models.dry_run import report, stand_in_tokenizer
from avsr.models.lora import LoRALinear
from avsr.models.presets import LLMS, PresetError, resolve
from avsr.settings import SettingError
from avsr.training.config import load_config

M = 1e6
# recipe: {measured quantity: the paper's number} (docs/papers.md sections 1.6, 5, 6, 7;
# docs/paper-configurations.md). "lora" / "lora_active": the LLM LoRA trained / run per forward;
# "video_lora": LoRA inside AV-HuBERT; "projector(_active)": all projectors / one token's path.
PAPER = {
    "llama_avsr_8b_asr": {"trainable": 42 * M, "lora": 27.26 * M, "projector": 14.69 * M},
    "llama_avsr_8b_vsr": {"trainable": 48 * M, "lora": 27.26 * M, "video_lora": 6.29 * M, "projector": 14.69 * M},
    "llama_avsr_8b_avsr": {"trainable": 57 * M, "lora": 27.26 * M, "video_lora": 0},
    "llama_avsr_1b_avsr": {"lora": 6.82 * M, "projector": 2 * 6.30 * M},
    "llama_smop_1b_jejr": {"projector": 25.2 * M, "projector_active": 12.6 * M, "lora": 6.82 * M},
    "llama_smop_1b_jedr": {"projector": 25.2 * M, "projector_active": 12.6 * M},
    "llama_smop_1b_dedr": {"projector": 50.4 * M, "projector_active": 12.6 * M},
    "llama_mtsk_1b_ms": {"lora": 6.8 * M, "lora_active": 6.8 * M},
    "llama_mtsk_1b_ss": {"lora": 4 * 6.82 * M, "lora_active": 6.8 * M},
    "llama_mtsk_1b_mss": {"lora": 5 * 6.82 * M, "lora_active": 13.6 * M},
    "omni_avsr_1b_s": {"trainable": 38.3 * M, "video_lora": 6.29 * M},
    "omni_avsr_1b_t": {"trainable": 51.9 * M, "video_lora": 6.29 * M},
    "omni_avsr_1b_st": {"trainable": 58.7 * M, "video_lora": 6.29 * M, "projector": 4 * 6.30 * M},
}


def measured(result: dict) -> dict:
    rows = {c["component"]: c for c in result["components"]}
    t = result["totals"]
    return {"trainable": t["trainable"], "projector": t["projector"], "projector_active": t["projector_active"],
            "lora": rows["llm_lora"]["trainable"], "lora_active": rows["llm_lora"]["active"],
            "video_lora": rows["video_lora"]["trainable"] if "video_lora" in rows else 0}


@pytest.mark.parametrize("recipe", sorted(PAPER))
def test_paper_recipes_have_the_papers_parameter_counts(recipe):
    result = report(load_config(recipe).model)
    got = measured(result)
    for key, paper in PAPER[recipe].items():
        assert got[key] == pytest.approx(paper, rel=0.01, abs=1), (recipe, key, got[key], paper)
    t = result["totals"]
    assert t["total"] == t["trainable"] + t["frozen"] > 1e9  # full size: a billion-parameter LLM


def test_dry_run_through_the_cli_needs_no_folder_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no models/, data/ or runs/ here
    code, out, err = run_cli("train", "omni_avsr_1b_st", "--dry-run", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["totals"]["trainable"] == pytest.approx(58.7 * M, rel=0.01)
    assert result["training"]["devices"] == 2 and result["training"]["precision"] == "bf16-true"
    assert result["backbones"]["llm"]["preset"] == "Llama-3.2-1B"
    assert result["lora"]["rank"] == 64 and result["lora"]["scale"] == 0.125
    assert result["video_lora"]["rank"] == 64 and result["video_lora"]["scale"] == 2.0
    code, out, err = run_cli("train", "llama_smop_1b_jejr", "--dry-run", "optim.lr=5e-4")
    assert code == 0, err
    assert "projector experts [joint] (4, top-2)" in out and "25.20 M" in out and "12.60 M" in out
    assert "lr 0.0005" in out
    code, out, err = run_cli("train", "llama_mtsk_1b_ms", "model.llm=Qwen/Qwen2.5-0.5B", "--dry-run", "--json")
    assert code == 0, err
    qwen = json.loads(out)  # no BOS, a pad token: 4 new tokens; r = 896 / 32
    assert qwen["new_tokens"] == ["<audio>", "</audio>", "<video>", "</video>"] and qwen["lora"]["rank"] == 28
    assert list(tmp_path.iterdir()) == []  # no run folder, nothing trained


def test_dry_run_errors_name_the_setting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("train", "llama_mtsk_1b_ms", "model.llm=models/MyLM", "--dry-run")
    assert code == 2 and "model.llm" in err and "MyLM" in err and "Llama-3.2-1B" in err and "Qwen2.5-7B" in err
    code, _, err = run_cli("train", "llama_mtsk_1b_ms", "--json")
    assert code == 2 and "--json goes with --dry-run" in err


def test_presets_resolve_by_folder_name_or_local_config(tmp_path):
    assert resolve("llm", "meta-llama/Llama-3.2-1B").name == "Llama-3.2-1B"
    assert resolve("llm", "/x/MODELS/llama-3.1-8b-instruct/").name == "Llama-3.1-8B"
    assert resolve("audio_encoder", "models/whisper-medium.en").d_model == 1024
    assert resolve("audio_encoder", "openai/whisper-small").layers == 12
    assert resolve("video_encoder", "ckpt/large_vox_iter5.pt").config().layers == 24
    assert resolve("video_encoder", "models/avhubert-base").config().embed_dim == 768
    with pytest.raises(PresetError, match="model.video_encoder.*avhubert-large"):
        resolve("video_encoder", "models/lips")
    # a local folder is read for its config.json, whatever its name
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, vocab_size=100).save_pretrained(tmp_path / "Llama-3.2-1B")
    local = resolve("llm", str(tmp_path / "Llama-3.2-1B"))
    assert local.config().hidden_size == 64


# Sizes printed on the model cards (billions), from the presets' architecture facts.
CARD = {"Llama-3.2-1B": 1.24, "Llama-3.2-3B": 3.21, "Llama-3.1-8B": 8.03, "Qwen2.5-0.5B": 0.49,
        "Qwen2.5-1.5B": 1.54, "Qwen2.5-3B": 3.09, "Qwen2.5-7B": 7.61, "SmolLM2-135M": 0.135}


def test_llm_presets_build_the_published_sizes():
    from transformers import AutoModelForCausalLM

    assert set(CARD) == set(LLMS)
    for name, billions in CARD.items():
        with torch.device("meta"):
            llm = AutoModelForCausalLM.from_config(LLMS[name].config())
        assert sum(p.numel() for p in llm.parameters()) / 1e9 == pytest.approx(billions, abs=0.006), name
        assert llm.model.layers[0].self_attn.v_proj.out_features == LLMS[name].kv_width


def tiny_llama_model(**settings) -> AVSRModel:
    """An ASR model on a tiny Llama (hidden 64, KV width 32) and a tiny Whisper encoder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from avsr.models.audio_encoder import WhisperAudioEncoder

    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2))
    audio = WhisperAudioEncoder.from_config(d_model=32, encoder_layers=1, encoder_attention_heads=2,
                                            encoder_ffn_dim=64, num_mel_bins=80)
    cfg = AVSRConfig(tasks=("asr",), projector_hidden=32, **settings)
    return AVSRModel(cfg, audio, None, llm, stand_in_tokenizer({"bos": "<s>", "eos": "</s>"}))


def test_lora_reduction_convention_on_a_tiny_llama():
    model = tiny_llama_model(lora_convention="reduction", lora_rank=16, lora_alpha=4)
    layers = {name.rsplit(".", 1)[-1]: m for name, m in model.llm.named_modules() if isinstance(m, LoRALinear)}
    q, v = layers["q_proj"], layers["v_proj"]
    # r = d / R = 64 / 16 = 4; scale = alpha / R = 4 / 16; v's output is the KV width (2 heads x 16)
    assert q.lora_A["shared"].shape == (4, 64) and q.lora_B["shared"].shape == (64, 4)
    assert v.lora_A["shared"].shape == (4, 64) and v.lora_B["shared"].shape == (32, 4)
    assert q.scale == v.scale == 0.25
    with torch.no_grad():
        q.lora_B["shared"].normal_()
        x = torch.randn(3, 64)
        update = q(x) - q.base(x)
        assert torch.allclose(update, 0.25 * x @ q.lora_A["shared"].T @ q.lora_B["shared"].T, atol=1e-5)
    # the standard convention reads the same numbers as r and alpha
    plain = tiny_llama_model(lora_rank=16, lora_alpha=4)
    q = next(m for m in plain.llm.modules() if isinstance(m, LoRALinear))
    assert q.lora_A["shared"].shape == (16, 64) and q.scale == 0.25
    assert lora_size("reduction", 2048, 32, 4) == (64, 8.0)  # Llama 3.2-1B: r 64, alpha 8 / r 64 = 0.125
    with pytest.raises(SettingError, match="lora_rank is a reduction factor .* must divide the width 64"):
        tiny_llama_model(lora_convention="reduction", lora_rank=48)


def test_lora_settings_the_llm_cannot_take_are_refused_before_any_adapter_is_made():
    """The bottleneck fits the narrowest adapted layer (v_proj: 64 -> 32), in both conventions,
    and every target names a linear layer; a rank of 1e9 would have asked for 512 GB."""
    assert tiny_llama_model(lora_rank=32).cfg.lora_rank == 32
    with pytest.raises(SettingError, match=r"lora_rank must give a LoRA bottleneck of at most 32, .* \(v_proj: "
                                           r"64 -> 32\); got 1000000000$"):
        tiny_llama_model(lora_rank=10**9)
    with pytest.raises(SettingError, match="got 1, a bottleneck of 64$"):
        tiny_llama_model(lora_convention="reduction", lora_rank=1)
    with pytest.raises(SettingError, match="lora_targets names no linear layer of the LLM: nope_proj .*q_proj"):
        tiny_llama_model(lora_targets=("q_proj", "nope_proj"))


def video_lora(model: AVSRModel) -> dict[str, torch.nn.Parameter]:
    return {k: p for k, p in model.named_parameters() if k.startswith("encoders.video.") and ".lora_" in k}


def test_video_encoder_lora_trains():
    frozen = tiny_model()
    assert not video_lora(frozen) and not any(p.requires_grad for p in frozen.encoders.parameters())
    model = tiny_model(video_lora_rank=4, video_lora_alpha=8).train()
    adapters = video_lora(model)
    assert len(adapters) == 2 * 2 * 1  # q and v, A and B, one layer
    assert all(p.requires_grad for p in adapters.values())
    assert not any(p.requires_grad for k, p in model.encoders.named_parameters() if ".lora_" not in k)
    batch = make_batch([6, 4])
    loss, _ = model(batch, "vsr")
    loss.backward()
    grads = {k: p.grad for k, p in adapters.items()}
    assert all(g is not None for g in grads.values())
    assert all(g.abs().sum() > 0 for k, g in grads.items() if ".lora_B." in k)  # B starts at 0, A does not
    # the adapters sit on the encoder's path: a changed B changes the video tokens
    with torch.no_grad():
        before = model.encode(batch, "vsr")[0]
        for k, p in adapters.items():
            if ".lora_B." in k:
                p.normal_()
        after = model.encode(batch, "vsr")[0]
    pair = next(iter(before))
    assert not torch.allclose(before[pair]["video"][0], after[pair]["video"][0])
    # cached features would bypass the adapters
    cached = {**batch, "video_features": torch.zeros(2, 6, 64), "video_feature_lengths": torch.tensor([6, 4])}
    with pytest.raises(ValueError, match="bypass the video encoder's LoRA"):
        model.encode(cached, "vsr")
    with pytest.raises(SettingError, match="video_lora_rank needs a task that reads video"):
        AVSRConfig(tasks=("asr",), video_lora_rank=16)


def test_video_encoder_lora_round_trips_through_a_checkpoint(tmp_path):
    from avsr.models.loading import load_checkpoint, save_checkpoint

    model = tiny_model(video_lora_rank=4, video_lora_alpha=8)
    with torch.no_grad():
        for p in video_lora(model).values():
            p.normal_()
    assert set(video_lora(model)) <= set(model.trainable_state_dict())
    save_checkpoint(model, tmp_path / "ckpt")
    other = tiny_model(video_lora_rank=4, video_lora_alpha=8)  # same backbones, adapters as initialised
    load_checkpoint(tmp_path / "ckpt", other)
    for k, p in video_lora(model).items():
        assert torch.equal(p, video_lora(other)[k]), k
    batch = make_batch([5])
    assert model.generate(batch, "vsr", num_beams=1, max_new_tokens=3) == \
        other.generate(batch, "vsr", num_beams=1, max_new_tokens=3)


def test_training_refuses_a_feature_cache_with_video_lora():
    from avsr.training.config import ConfigError
    from avsr.training.train import check_feature_cache

    cfg = load_config("omni_avsr_1b_st", ["data.feature_cache_copies=2"])
    with pytest.raises(ConfigError, match="data.feature_cache_copies must be 0 when model.video_lora_rank"):
        check_feature_cache(cfg)
    check_feature_cache(load_config("omni_avsr_1b_st"))  # no cache: fine
    check_feature_cache(load_config("llama_mtsk_1b_ms", ["data.feature_cache_copies=2"]))  # frozen encoder: fine
