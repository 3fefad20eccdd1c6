"""AV-HuBERT video encoder: shapes, padding/batch invariance, real-size parameter counts,
gradient flow and checkpoint-compatible parameter names. Tiny config, CPU, a few seconds."""

import pytest
import torch
from torch import nn

from avsr.models.video_encoder import (
    ModelConfigError,
    VideoEncoder,
    VideoEncoderConfig,
    WeightNormConv1d,
)


def tiny_model(seed: int = 0, **overrides) -> VideoEncoder:
    torch.manual_seed(seed)
    return VideoEncoder(VideoEncoderConfig.tiny(**overrides)).eval()


def meta_model(cfg: VideoEncoderConfig) -> VideoEncoder:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return VideoEncoder(cfg)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_output_shapes_and_padding_mask():
    model = tiny_model()
    torch.manual_seed(1)
    lengths = torch.tensor([20, 13, 7])
    video = torch.randn(3, 20, 88, 88)
    with torch.no_grad():
        features, padding_mask = model(video, lengths)
    assert features.shape == (3, 20, model.output_dim) == (3, 20, 128)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
    assert padding_mask.dtype == torch.bool and padding_mask.shape == (3, 20)
    assert padding_mask.tolist() == [[t >= n for t in range(20)] for n in lengths.tolist()]
    assert (features[padding_mask] == 0).all()  # padded frames are zeroed
    assert (features[~padding_mask].abs().sum(-1) > 0).all()
    # Any H x W works; lengths=None means "no padding".
    with torch.no_grad():
        features, padding_mask = model(torch.randn(2, 5, 40, 56))
    assert features.shape == (2, 5, 128) and not padding_mask.any()


@pytest.mark.parametrize("layer_norm_first, conv_pos, input_pool", [(True, 8, 1), (False, 7, 1), (True, 8, 2)])
def test_short_clip_is_batch_invariant(layer_norm_first, conv_pos, input_pool):
    """A clip's features must not depend on the longer clip it is padded against, nor on
    what the padded frames contain (the reference code fails this: papers.md §10)."""
    model = tiny_model(layer_norm_first=layer_norm_first, conv_pos=conv_pos, input_pool=input_pool)
    torch.manual_seed(2)
    short, long = torch.randn(9, 88, 88), torch.randn(21, 88, 88)
    batch = torch.randn(2, 21, 88, 88)  # garbage in the padding on purpose
    batch[0, :9], batch[1] = short, long
    with torch.no_grad():
        alone, alone_mask = model(short[None], torch.tensor([9]))
        batched, batched_mask = model(batch, torch.tensor([9, 21]))
        long_alone, _ = model(long[None], torch.tensor([21]))
    assert not alone_mask.any() and batched_mask[0, 9:].all() and not batched_mask[0, :9].any()
    assert (batched[0, :9] - alone[0]).abs().max().item() < 1e-5
    assert (batched[1] - long_alone[0]).abs().max().item() < 1e-5
    assert (batched[0, 9:] == 0).all()


def test_input_pool_shows_the_encoder_an_averaged_frame():
    """input_pool=2 on 88x88 crops is the same network fed 44x44 frames of 2x2 pixel means:
    same parameters, same features (the quickstart's lip encoder; a quarter of the compute)."""
    pooled, plain = tiny_model(input_pool=2), tiny_model()
    assert pooled.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(pooled.state_dict())
    torch.manual_seed(3)
    video, lengths = torch.randn(2, 12, 88, 88), torch.tensor([12, 7])
    small = video.reshape(2, 12, 44, 2, 44, 2).mean(dim=(3, 5))  # (B, T, 44, 44)
    with torch.no_grad():
        expected, _ = plain(small, lengths)
        got, _ = pooled(video, lengths)
    assert (got - expected).abs().max().item() < 1e-5


def test_real_sizes_instantiate_on_meta_with_avhubert_parameter_counts():
    """AV-HuBERT reports 103M (Base) and 325M (Large) parameters (rounded). Those totals
    also hold the audio front end (Linear 104 -> D: 0.08M / 0.11M) and the pre-training
    heads (final_proj D -> 256, cluster embeddings, mask_emb: ~0.2-0.5M), which the
    video-only encoder does not build, so we expect up to ~1M less than the paper, and
    allow 0.5M above it for the paper's rounding. Measured: Base 102.54M, Large 324.52M."""
    base, large = meta_model(VideoEncoderConfig.base()), meta_model(VideoEncoderConfig.large())
    assert all(p.device.type == "meta" for p in base.parameters())
    assert 101.5e6 <= n_params(base) <= 103.5e6
    assert 323.5e6 <= n_params(large) <= 325.5e6
    # The ResNet-18 front end (3-D stem + trunk, no fc) is the same in both: ~11.2M.
    resnet = n_params(base.feature_extractor_video.resnet)
    assert resnet == n_params(large.feature_extractor_video.resnet)
    assert 11.0e6 <= resnet <= 11.4e6
    # Tiny really is tiny (CPU tests).
    assert n_params(meta_model(VideoEncoderConfig.tiny())) < 2e6


def test_parameter_names_and_shapes_match_avhubert_checkpoint():
    """The names/shapes a fairseq AV-HuBERT Large state dict holds for the video path."""
    state = meta_model(VideoEncoderConfig.large()).state_dict()
    expected = {
        "feature_extractor_video.resnet.frontend3D.0.weight": (64, 1, 5, 7, 7),
        "feature_extractor_video.resnet.frontend3D.1.running_var": (64,),
        "feature_extractor_video.resnet.frontend3D.2.weight": (64,),  # PReLU
        "feature_extractor_video.resnet.trunk.layer1.0.conv1.weight": (64, 64, 3, 3),
        "feature_extractor_video.resnet.trunk.layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "feature_extractor_video.resnet.trunk.layer4.1.relu2.weight": (512,),
        "feature_extractor_video.proj.weight": (1024, 512),
        "layer_norm.weight": (2048,),
        "post_extract_proj.weight": (1024, 2048),
        "encoder.pos_conv.0.weight_g": (1, 1, 128),
        "encoder.pos_conv.0.weight_v": (1024, 64, 128),
        "encoder.pos_conv.0.bias": (1024,),
        "encoder.layers.23.self_attn.q_proj.weight": (1024, 1024),
        "encoder.layers.23.self_attn.out_proj.bias": (1024,),
        "encoder.layers.23.self_attn_layer_norm.weight": (1024,),
        "encoder.layers.23.fc1.weight": (4096, 1024),
        "encoder.layers.23.fc2.weight": (1024, 4096),
        "encoder.layers.23.final_layer_norm.bias": (1024,),
        "encoder.layer_norm.weight": (1024,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert "encoder.layers.24.fc1.weight" not in state
    prefixes = {key.split(".")[0] for key in state}
    assert prefixes == {"feature_extractor_video", "layer_norm", "post_extract_proj", "encoder"}


def test_weight_norm_conv_matches_torch_weight_norm():
    """Our weight_g / weight_v mean what torch's weight_norm(dim=2) means in fairseq."""
    torch.manual_seed(3)
    ours = WeightNormConv1d(channels=16, kernel=6, groups=4)
    with torch.no_grad():
        ours.weight_g.mul_(torch.rand_like(ours.weight_g) + 0.5)  # g != ||v||
    conv = nn.Conv1d(16, 16, 6, padding=3, groups=4)
    conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
    with torch.no_grad():
        conv.parametrizations.weight.original0.copy_(ours.weight_g)
        conv.parametrizations.weight.original1.copy_(ours.weight_v)
        conv.bias.copy_(torch.randn(16))
        ours.bias.copy_(conv.bias)
        x = torch.randn(2, 16, 11)
        torch.testing.assert_close(ours(x), conv(x))


def test_gradients_reach_every_parameter():
    torch.manual_seed(4)
    model = VideoEncoder(VideoEncoderConfig.tiny()).train()  # BatchNorm in batch-stat mode
    video = torch.randn(2, 12, 48, 48)
    features, padding_mask = model(video, torch.tensor([12, 8]))
    (features * torch.randn_like(features)).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_rejects_bad_settings_and_inputs():
    with pytest.raises(ModelConfigError, match="heads"):
        VideoEncoderConfig.tiny(heads=3)
    with pytest.raises(ModelConfigError, match="modality_fuse"):
        VideoEncoderConfig.tiny(modality_fuse="sum")
    with pytest.raises(ModelConfigError, match="input_pool"):
        VideoEncoderConfig.tiny(input_pool=0)
    model = tiny_model()
    with pytest.raises(ValueError, match="lengths"):
        model(torch.zeros(2, 4, 16, 16), torch.tensor([4, 5]))
    with pytest.raises(ValueError, match="video"):
        model(torch.zeros(2, 1, 4, 16, 16), torch.tensor([4, 4]))
