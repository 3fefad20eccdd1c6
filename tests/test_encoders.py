"""The encoder table (avsr.models.encoders): a Whisper folder of any size loads through it, only its
encoder is read, and the frame rates the elastic budgets use come from it."""

from __future__ import annotations

import torch

from avsr.models.avsr_model import AVSRConfig
from avsr.models.encoders import ENCODERS
from avsr.models.tasks import RatePair, tokens_per_second


def test_a_128_mel_whisper_folder_loads_encoder_only(tmp_path):
    """large-v3's 128 mel bins come from the folder's config; the encoder's tensors are those
    transformers saved, and the decoder is never built."""
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    whisper = WhisperModel(WhisperConfig(d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                                         decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96,
                                         num_mel_bins=128))
    whisper.save_pretrained(tmp_path / "w")
    encoder = ENCODERS["audio"].load(str(tmp_path / "w"), AVSRConfig())
    assert encoder.output_dim == 64 and encoder.log_mel.filters.shape[0] == 128
    assert not any("decoder" in name for name, _ in encoder.named_modules())
    saved = whisper.get_encoder().state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in encoder.encoder.state_dict().items())
    audio = 0.1 * torch.randn(2, 16000)
    feats, pad = encoder(audio, torch.tensor([16000, 8000]))
    assert feats.shape == (2, 50, 64) and int((~pad).sum(1)[1]) == 25


def test_frame_rates_come_from_the_table():
    assert ENCODERS["audio"].frames_per_second == 50.0 and ENCODERS["video"].frames_per_second == 25.0
    assert tokens_per_second("avsr", RatePair(4, 2)) == 50.0 / 4 + 25.0 / 2
    assert ENCODERS["video"].layer().__name__ == "EncoderLayer"
