"""`avsr import` of the authors' released checkpoints, on fixtures in their layout (no real file can
be downloaded here; tests/authors_fixtures.py builds them as the authors' code builds its model).

For every layout: the import, then the authors' forward written out below step by step (their
dataset and test transforms, Whisper as they call it, their compression, projectors, LoRA
arithmetic and concatenation) against our imported model: logits equal within 1e-5 in float32
for every task and rate pair the file covers, and the same beam search output. The AV-HuBERT
trunk of the reference is avsr's port (checked against fairseq's rules in test_video_encoder.py);
the authors' LoRA is added to it by hooks, as their fairseq fork adds it.

Sources: [L] Llama-AVSR @410842d, [O] Omni-AVSR @7de6be2, [S] Dr-SHAP-AV @4d07a10.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from authors_fixtures import FILE_NAMES, PROMPT_OF, SPECS, build
from conftest import run_cli

TASK_OF = {"audio": "asr", "video": "vsr", "audiovisual": "avsr"}
MODALITY_OF = {v: k for k, v in TASK_OF.items()}
# The authors' beam width ([L] README: --num-beams 15); 12 new tokens instead of their 32 keep the test
# short (a random LLM never ends early, so every search runs to the limit)
BEAMS, MAX_NEW = 15, 12


def clip(seed: int = 0, frames: int = 23) -> tuple[np.ndarray, np.ndarray, str]:
    """A raw recording: (audio (frames * 640,) float32 16 kHz, video (frames, 96, 96) uint8, transcript)."""
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal(frames * 640)).astype(np.float32)
    video = rng.integers(0, 256, (frames, 96, 96), dtype=np.uint8)
    return audio, video, "place blue at f two now"


# ------------------------------------------------------------------------------ the authors' forward


def authors_inputs(fx, audio: np.ndarray, video: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """[L] datamodule/av_dataset.py L126-L135 and transforms.py (test): audio cut or padded to the
    video's length, layer-normed; video / 255, centre 88 crop, normalised, cut to a multiple of
    its rate when the model has one video rate (not Matryoshka: [O] av_dataset.py L73-L76)."""
    a = torch.from_numpy(audio)[:, None]  # (N, 1)
    n = len(video) * 640
    a = F.pad(a, (0, 0, 0, n - a.shape[0])) if a.shape[0] < n else a[:n]
    a = F.layer_norm(a, a.shape, eps=1e-8)
    v = torch.from_numpy(video).float() / 255.0  # (T, 96, 96)
    top = int(round((v.shape[1] - 88) / 2.0))  # torchvision CenterCrop
    v = (v[:, top:top + 88, top:top + 88] - 0.421) / 0.165
    rates = fx.spec.video_rates
    if len(rates) == 1 and rates[0] != 1:
        v = v[: v.shape[0] // rates[0] * rates[0]]
    return a, v


@contextlib.contextmanager
def lora_hooks(pairs: list[tuple[nn.Module, list[tuple[nn.Linear, nn.Linear]]]], scale: float):
    """out + (sum of up(down(x))) * scale on each (linear, adapters): the authors' q / v update
    ([O] Omni_AVSR/Llama_LoRA.py L249-L258; AV-HuBERT: [L] multihead_attention.py L489-L494)."""
    def hook(adapters):
        return lambda module, inputs, out: out + sum(up(down(inputs[0])) for down, up in adapters) * scale

    handles = [linear.register_forward_hook(hook(adapters)) for linear, adapters in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def llm_hooks(fx, task: str):
    names = {"plain": ["plain"], "task": [MODALITY_OF[task]], "st": [MODALITY_OF[task], "shared"]}
    active = names["st" if fx.spec.shared_lora else "task" if fx.spec.task_lora else "plain"]
    pairs = []
    for i, layer in enumerate(fx.llm.model.layers):
        for m, linear in (("Q", layer.self_attn.q_proj), ("V", layer.self_attn.v_proj)):
            pairs.append((linear, [fx.llm_lora[i][a][m] for a in active]))
    return lora_hooks(pairs, fx.lora_scale)


def avhubert_hooks(fx):
    pairs = [(getattr(layer.self_attn, f"{m.lower()}_proj"), [fx.avh_lora[i][m]])
             for i, layer in enumerate(fx.avhubert.encoder.layers) for m in "QV"] if fx.avh_lora else []
    return lora_hooks(pairs, 2.0)


def compress(x: torch.Tensor, rate: int, mode: str) -> torch.Tensor:
    """[L] modeling_AVSRLLM.py L512-L524: stack K frames (an incomplete last group dropped) or AvgPool1d(K)."""
    if rate == 1:
        return x
    if mode == "stack":
        groups = [x[:, i:i + rate, :].reshape(x.shape[0], 1, -1) for i in range(0, x.shape[1], rate)]
        return torch.stack(groups if x.shape[1] % rate == 0 else groups[:-1], dim=1).squeeze(2)
    return nn.AvgPool1d(rate)(x.transpose(1, 2).contiguous()).transpose(1, 2).contiguous()


def encode_audio(fx, a: torch.Tensor, rate: int) -> torch.Tensor:
    """[O] modeling_OmniAVSR.py L528-L537: the feature extractor (30 s), the encoder, cut, compress.
    The encoder's output does not depend on the rate: computed once per clip."""
    from transformers import WhisperFeatureExtractor

    key = (a.shape[0], float(a.sum()))
    if key not in fx.cache:
        audios = a[None]  # the test batch (1, N, 1)
        features = WhisperFeatureExtractor(feature_size=80)(audios.squeeze(-1).numpy(), return_tensors="pt",
                                                            sampling_rate=16000).input_features
        fx.cache[key] = fx.whisper(features).last_hidden_state
    enc = fx.cache[key]
    max_len = torch.tensor([a.shape[0]]).max()
    enc = enc[:, 0: max(int(max_len / 16000 * 50), 25), :]
    return compress(enc, rate, fx.spec.compression)


def encode_video(fx, v: torch.Tensor, rate: int) -> torch.Tensor:
    with avhubert_hooks(fx):
        enc, _ = fx.avhubert(v[None])  # extract_finetune(video=...) of the port: (1, T, D)
    return compress(enc, rate, fx.spec.compression)


def project(fx, modality: str, x: torch.Tensor, rate: int) -> torch.Tensor:
    proj = fx.projectors[modality]
    if isinstance(proj, nn.ModuleList):  # [O] L429, L447: the rate's projector
        rates = fx.spec.audio_rates if modality == "audio" else fx.spec.video_rates
        proj = proj[rates.index(rate)]
    return proj(x)


def top_k_moe(moe: nn.Module, hidden: torch.Tensor, top_k: int = 2) -> torch.Tensor:
    """[S] scripts/modeling_LlamaSMoP.py L38-L72."""
    b, t, d = hidden.shape
    hidden = hidden.view(-1, d)
    logits = moe.gate(hidden)
    weights = F.softmax(logits, dim=1, dtype=torch.float)
    weights, selected = torch.topk(weights, top_k, dim=-1)
    weights /= weights.sum(dim=-1, keepdim=True)
    weights = weights.to(hidden.dtype)
    out = torch.zeros((b * t, moe.experts[0][2].out_features), dtype=hidden.dtype)
    mask = F.one_hot(selected, num_classes=len(moe.experts)).permute(2, 1, 0)
    for e, expert in enumerate(moe.experts):
        idx, top_x = torch.where(mask[e])
        current = hidden[None, top_x].reshape(-1, d)
        out.index_add_(0, top_x, (expert(current) * weights[top_x, idx, None]).to(hidden.dtype))
    return out.reshape(b, t, -1)


def authors_embeddings(fx, task: str, pair: tuple, audio, video, text: str | None) -> torch.Tensor:
    """The LLM input: [L] modeling_AVSRLLM.py L394-L452 (prompt after BOS, then video, then audio
    inserted after BOS), [O] L409-L455 (the prompt buffer), [S] L587-L595 (one mixture for both)."""
    tok, llm = fx.tokenizer, fx.llm
    embed = llm.model.embed_tokens
    a, v = authors_inputs(fx, audio, video)
    feats = {}
    if task in ("asr", "avsr"):
        feats["audio"] = encode_audio(fx, a, pair[0])
    if task in ("vsr", "avsr"):
        feats["video"] = encode_video(fx, v, pair[1])
    if fx.moe is not None:
        joint = top_k_moe(fx.moe, torch.cat((feats["audio"], feats["video"]), dim=1))
        n = feats["audio"].shape[1]
        tokens = {"audio": joint[:, :n], "video": joint[:, n:]}
    else:
        tokens = {m: project(fx, m, x, pair[0 if m == "audio" else 1]) for m, x in feats.items()}
    ids = [tok.bos_token_id] + ([] if text is None else [*tok(text, add_special_tokens=False)["input_ids"],
                                                        tok.eos_token_id])
    text_embeddings_ = embed(torch.tensor([ids]))
    if fx.spec.layout == "omni-avsr":
        prompt = fx.prompts[MODALITY_OF[task]]
    else:
        prompt = embed(torch.tensor([tok(PROMPT_OF[MODALITY_OF[task]], add_special_tokens=False)["input_ids"]]))
    x = torch.cat([text_embeddings_[:, :1], prompt, text_embeddings_[:, 1:]], dim=1)
    for m in ("video", "audio"):  # each inserted right after BOS: audio ends up first
        if m in tokens:
            start = embed(torch.tensor([[tok.convert_tokens_to_ids(f"<{m}>")]]))
            end = embed(torch.tensor([[tok.convert_tokens_to_ids(f"</{m}>")]]))
            x = torch.cat([x[:, :1], start, tokens[m], end, x[:, 1:]], dim=1)
    return x


@torch.no_grad()
def authors_logits(fx, task, pair, audio, video, text) -> torch.Tensor:
    x = authors_embeddings(fx, task, pair, audio, video, text)
    with llm_hooks(fx, task):
        return fx.llm(inputs_embeds=x).logits[0]  # (L, V)


@torch.no_grad()
def authors_decode(fx, task, pair, audio, video) -> str:
    """[L] modeling_AVSRLLM.py L274-L278 (deterministic: do_sample off; see docs/import.md)."""
    x = authors_embeddings(fx, task, pair, audio, video, None)
    tok = fx.tokenizer
    with llm_hooks(fx, task):
        ids = fx.llm.generate(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long),
                              max_new_tokens=MAX_NEW, num_beams=BEAMS, do_sample=False, eos_token_id=tok.eos_token_id,
                              bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    return " ".join(tok.batch_decode(ids, skip_special_tokens=True)[0].lower().split())


# ------------------------------------------------------------------------------ ours


def our_batch(model, audio, video, text):
    """The clip as `avsr eval` / `avsr transcribe` batch it (avsr.evaluation.decode): the evaluation
    transform, collate, and the frozen encoders run once for every task and rate."""
    from avsr.data.batching import collate
    from avsr.data.transforms import AugmentConfig, EvalTransform
    from avsr.models.avsr_model import frozen_features

    batch = collate([EvalTransform(AugmentConfig())({"audio": audio, "video": video, "text": text, "id": "x"})])
    for m in model.encoders:
        if not model.encoder_trains(m):
            batch[f"{m}_features"], batch[f"{m}_feature_lengths"] = frozen_features(model.encoders[m], batch, m)
    return batch


@torch.no_grad()
def our_logits(model, task, pair, batch) -> torch.Tensor:
    from avsr.models.lora import set_active
    from avsr.models.tasks import RatePair, adapter_names

    pair = model.check_pair(task, RatePair(*pair))
    tokens, _ = model.encode(batch, task, [pair])
    set_active(model.llm, adapter_names(model.cfg.lora_scheme, task, pair))
    embeds, mask, _ = model.assemble(tokens[pair], task, model.targets(batch["text"]))
    return model.llm(inputs_embeds=embeds, attention_mask=mask).logits[0]


def task_pairs(spec) -> list[tuple[str, tuple]]:
    a, v = spec.audio_rates, spec.video_rates
    tasks = ("asr", "vsr", "avsr") if spec.layout == "omni-avsr" else (
        "avsr" if len(spec.modalities) == 2 else TASK_OF[spec.modalities[0]],)
    out = []
    for t in tasks:
        out += [(t, (r, None)) for r in a] if t == "asr" else [(t, (None, r)) for r in v] if t == "vsr" else \
            [(t, (x, y)) for x in a for y in v]
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """{fixture name: (Fixture, checkpoint folder, report)}, each imported through the CLI."""
    done = {}
    for name in SPECS:
        folder = tmp_path_factory.mktemp(name)
        fx = build(name, folder)
        code, out, err = run_cli("import", fx.path, "--llm", fx.llm_dir, "--out", folder / "ckpt")
        assert code == 0, err
        done[name] = (fx, folder / "ckpt", json.loads((folder / "ckpt" / "import_report.json").read_text()), out)
    return done


@pytest.mark.parametrize("name", list(SPECS))
def test_import_accounts_for_every_tensor(imported, name):
    fx, ckpt, report, printed = imported[name]
    keys = set(torch.load(fx.path, weights_only=True, mmap=True))
    used, skipped = set(report["used"]), set(report["tensors"]["not_needed"])
    assert used | skipped == keys and not used & skipped
    expected_skips = {"llm.lm_head.weight"} if fx.spec.tied else set()
    if "video" in fx.spec.modalities:  # the AV-HuBERT pre-training heads and audio front end
        expected_skips |= {f"video_encoder.{k}" for k in ("feature_extractor_audio.proj.weight", "mask_emb",
                                                         "feature_extractor_audio.proj.bias", "label_embs_concat",
                                                         "final_proj.weight", "final_proj.bias")}
    if fx.spec.layout == "omni-avsr":
        expected_skips |= {f"prompt_{m}" for m in PROMPT_OF}
    assert skipped == expected_skips
    assert report["layout"] == fx.spec.layout and report["file"] == FILE_NAMES[name]
    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["imported"]["sha256"] == report["sha256"] and saved["decoding"] == {"num_beams": 15, "max_new_tokens": 32}
    assert saved["model"]["compression"] == fx.spec.compression
    assert saved["model"]["projector_layer_norm"] == (fx.spec.layer_norm or fx.spec.layout == "smop")
    assert f"{len(keys)} tensors" in printed


@pytest.mark.parametrize("name", list(SPECS))
def test_logits_and_beams_equal_the_authors(imported, name):
    from avsr.models.loading import load_checkpoint

    fx, ckpt, _, _ = imported[name]
    model = load_checkpoint(ckpt)
    audio, video, text = clip()
    batch = our_batch(model, audio, video, text)
    for task, pair in task_pairs(fx.spec):
        ref = authors_logits(fx, task, pair, audio, video, text)
        ours = our_logits(model, task, pair, batch)
        assert ours.shape == ref.shape, (task, pair)
        assert (ours - ref).abs().max() <= 1e-5, (task, pair, float((ours - ref).abs().max()))
        hyp = model.generate(batch, task, num_beams=BEAMS, max_new_tokens=MAX_NEW, pair=pair)[0]
        assert hyp == authors_decode(fx, task, pair, audio, video), (task, pair)


def test_imported_checkpoint_moves_with_its_backbones(imported, tmp_path):
    """Backbones are inside the checkpoint and recorded relative to it: a moved copy loads."""
    import shutil

    from avsr.models.loading import Checkpoint

    _, ckpt, _, _ = imported["llama-avsr-1b-ln"]
    moved = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(ckpt, moved)
    opened = Checkpoint.open(moved)
    assert opened.config.llm == str((moved / "backbones" / "llm").resolve())
    assert opened.config.audio_encoder == str((moved / "backbones" / "whisper").resolve())


def test_bfloat16_file_keeps_its_dtype(tmp_path):
    """A bf16 file (the authors train bf16-true) is written in bf16 and loads as float32 with the
    same values."""
    from safetensors import safe_open

    from avsr.models.loading import load_checkpoint

    fx = build("smop", tmp_path, dtype=torch.bfloat16)
    code, _, err = run_cli("import", fx.path, "--llm", fx.llm_dir, "--out", tmp_path / "ckpt")
    assert code == 0, err
    with safe_open(str(tmp_path / "ckpt" / "trainable.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    model = load_checkpoint(tmp_path / "ckpt")
    file = torch.load(fx.path, weights_only=True)
    assert torch.equal(model.projector.routers["joint"].weight, file["audiovisual_proj.gate.weight"].float())
    assert torch.equal(model.llm.get_input_embeddings().weight, file["llm.model.embed_tokens.weight"].float())


def test_rates_from_release_names():
    from avsr.backbones.released import rates_from_name

    assert rates_from_name(FILE_NAMES["omni-st"], ["audio", "video"]) == {"audio": (4, 16), "video": (2, 5)}
    assert rates_from_name(FILE_NAMES["smop"], ["audio", "video"]) == {"audio": (4,), "video": (2,)}
    assert rates_from_name(FILE_NAMES["llama-avsr-avsr"], ["audio", "video"]) == {"audio": (4,), "video": (2,)}
    assert rates_from_name(FILE_NAMES["llama-avsr-asr"], ["audio"]) == {"audio": (3,)}
    assert rates_from_name("VSR_LRS3_avg-pooling_AVH-Large_LoRA_Llama3.2-3B_Vdown5.pth", ["video"]) == {"video": (5,)}
    assert rates_from_name("ASR_LRS2_avg-pooling_AVH-Large_LoRA_Llama3.2-3B_Adown32.pth", ["audio"]) == {"audio": (32,)}
    assert rates_from_name("model_avg_1.pth", ["audio", "video"]) == {}


class RunsCode:
    """A pickle that runs code when loaded: it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_file_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    fx = build("llama-avsr-asr", tmp_path / "fx")
    marker = tmp_path / "ran.txt"
    state = torch.load(fx.path, weights_only=True)
    state["payload"] = RunsCode(marker)
    evil = tmp_path / "evil.pth"
    torch.save(state, evil)
    assert not marker.exists()
    code, _, err = run_cli("import", evil, "--llm", fx.llm_dir, "--out", tmp_path / "ckpt")
    assert code == 2 and "refused" in err and "builtins.exec" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "ckpt").exists()
    with pytest.raises(pickle.UnpicklingError):  # the loader itself would refuse it too
        torch.load(evil, weights_only=True)
    assert not marker.exists()
    assert sorted(os.listdir(tmp_path)) == ["evil.pth", "fx"]  # nothing written beside


def test_rates_not_in_the_file_must_be_given(imported, tmp_path):
    """Average pooling leaves no trace of the rates in the tensors: a file renamed so that its
    name says none is refused until they are given."""
    fx, _, _, _ = imported["llama-avsr-1b-ln"]
    plain = tmp_path / "model_avg_1.pth"
    plain.write_bytes(fx.path.read_bytes())
    code, _, err = run_cli("import", plain, "--llm", fx.llm_dir, "--out", tmp_path / "a")
    assert code == 2 and "give --audio-rates" in err and not (tmp_path / "a").exists()
    code, _, err = run_cli("import", plain, "--llm", fx.llm_dir, "--out", tmp_path / "b", "--audio-rates", "4",
                           "--video-rates", "2")
    assert code == 0, err
    assert json.loads((tmp_path / "b" / "config.json").read_text())["model"]["video_rates"] == [2]


def test_transcribe_names_the_imported_model_and_rates(imported, tiny_corpus, tmp_path):
    """`avsr transcribe` takes an imported checkpoint as it is: a corpus clip (mouth crops + its
    wav: AVSR) at a chosen rate pair, the JSON naming the imported file, layout and rates."""
    _, ckpt, report, _ = imported["omni-st"]
    clip_path = sorted(Path(tiny_corpus[0].out).rglob("*.mp4"))[0]
    out = tmp_path / "t.json"
    code, _, err = run_cli("transcribe", clip_path, "--checkpoint", ckpt, "--format", "json", "--out", out,
                           "--rates", "16,5", "--max-new-tokens", "4", "--quiet")
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["num_beams"] == 15  # the authors' beam width, from the checkpoint
    assert result["imported"]["file"] == report["file"] and result["imported"]["variant"] == "Omni-AVSR-ST"
    assert result["imported"]["rates"] == {"audio": [4, 16], "video": [2, 5]}
    assert result["files"][0]["task"] == "avsr" and result["files"][0]["rates"] == "a16v5"
