"""AV-HuBERT video encoder (video-only path) in plain PyTorch, no fairseq.

Llama-AVSR and its successors use a frozen AV-HuBERT Large as the video encoder
(`extract_finetune(source={"video": v, "audio": None})`, docs/papers.md §1.1). This module
rebuilds that exact computation so a real checkpoint can be loaded with a key-renaming
function, and adds what the reference lacks (docs/papers.md §10): a padding mask that is
honoured everywhere, so a clip's features do not depend on what it is batched with.

Pipeline (B batch, T frames at 25 fps, H x W mouth crops, 88 x 88 in AV-HuBERT)::

    video (B, T, H, W), normalised (pixel/255 - 0.421) / 0.165
      -> 3-D conv stem  Conv3d(1->C0, k=(5,7,7), s=(1,2,2)) + BN + PReLU + MaxPool(1,3,3)/(1,2,2)
      -> 2-D ResNet-18 trunk per frame (BasicBlocks, 2 per stage, C1..C4) + global avg pool
      -> (B, T, C4)                      C4 = 512 in the real model
      -> proj Linear(C4 -> D)            `feature_extractor_video.proj`
      -> concat [zero audio (D), video (D)] -> (B, T, 2D)   audio first, as AV-HuBERT does
      -> LayerNorm(2D) -> post_extract_proj Linear(2D -> D)
      -> conv positional embedding + L transformer layers (pre-LN) + final LayerNorm
      -> (B, T, D)

Fusion (`modality_fuse`). AV-HuBERT projects *each* modality to D before fusing, and in
the video-only path it creates the audio stream as zeros of width D *after* the audio
projection (`features_video.new_zeros(B, D, T)`). The concatenated feature is therefore
2D wide (2048 for Large, 1536 for Base), not 2 x 512, and the audio front end
(`feature_extractor_audio.proj`, Linear(104 -> D)) never touches the output. We thus
build no audio parameters at all; `audio_feat_dim` is kept in the config only to
document/check the checkpoint. With `modality_fuse="add"` the fused width is D and
there is no `post_extract_proj` (as in AV-HuBERT).

Padding. `lengths` gives each clip's real frame count; padded frames are handled so that
real frames' outputs are exactly those of the clip run alone (up to float rounding):

* the 3-D stem mixes +-2 neighbouring frames, so padded input frames are zeroed first,
  which is exactly what the stem's own zero padding shows a lone clip;
* everything after the stem convolution (BatchNorm, PReLU, pooling, the ResNet trunk) is
  per frame and is run on the real frames only; padded frames get zero features. This
  also keeps padded frames out of BatchNorm's batch statistics in train mode (the
  reference includes them);
* padded positions are zeroed before the positional convolution (as fairseq does);
* attention uses a key padding mask;
* padded positions of the output are set to zero.

Checkpoint key mapping (a fairseq AV-HuBERT `.pt`, state dict in `ckpt["model"]`):

* 1:1, same names and shapes: `feature_extractor_video.resnet.frontend3D.{0,1,2}.*`,
  `feature_extractor_video.resnet.trunk.layer{1..4}.{0,1}.{conv1,bn1,relu1,conv2,bn2,
  relu2,downsample.0,downsample.1}.*`, `feature_extractor_video.proj.*`, `layer_norm.*`,
  `post_extract_proj.*`, `encoder.pos_conv.0.{weight_g,weight_v,bias}`,
  `encoder.layers.N.self_attn.{q,k,v,out}_proj.*`, `encoder.layers.N.self_attn_layer_norm.*`,
  `encoder.layers.N.{fc1,fc2}.*`, `encoder.layers.N.final_layer_norm.*`,
  `encoder.layer_norm.*`. BatchNorm buffers include `num_batches_tracked`.
* to drop: `feature_extractor_audio.*` (see Fusion), `mask_emb`, `final_proj.*`,
  `label_embs_concat`, `target_glu.*` (pre-training heads).
* fine-tuned (AVHubertSeq2Seq / CTC) checkpoints: strip the `encoder.w2v_model.` prefix
  and drop `decoder.*`.
* `encoder.pos_conv.0` is fairseq's `nn.utils.weight_norm(conv, dim=2)`: `weight_g` has
  shape (1, 1, K) and `weight_v` (D, D / groups, K); we keep the two parameters under the
  same names. A checkpoint saved with the newer parametrization API would have
  `parametrizations.weight.original0/original1` = `weight_g/weight_v`.
* config from `ckpt["cfg"]["model"]`: encoder_embed_dim, encoder_layers,
  encoder_attention_heads, encoder_ffn_embed_dim, layer_norm_first, conv_pos,
  conv_pos_groups, resnet_relu_type, modality_fuse, audio_feat_dim. `sub_encoder_layers`
  must be 0 (per-modality transformers are not supported); the ResNet widths are fixed
  at 64/64/128/256/512 in AV-HuBERT.
* not modelled: `feature_grad_mult` (only scales front-end gradients in pre-training),
  masking and modality dropout (pre-training only).
* reading such a file safely (allow-listed unpickling, no fairseq) and the rules above:
  `avsr.models.avhubert_fairseq`; `read_fairseq_checkpoint` below checks the result against
  this model, and `load_video_encoder` takes the `.pt` file itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# AV-HuBERT's input normalisation and crop size live with the transforms that apply them.
from avsr.data.transforms import AVHUBERT_CROP_SIZE, AVHUBERT_PIXEL_MEAN, AVHUBERT_PIXEL_STD  # noqa: F401
from avsr.errors import AvsrError
from avsr.settings import is_int, is_number
from avsr.models.avhubert_fairseq import (FOLDER_SOURCE, CheckpointFormatError, EncoderWeights,
                                          check_encoder_weights, print_licence_notice, read_encoder_weights)


class ModelConfigError(AvsrError):
    """A model setting that cannot build a network (names the field at fault)."""


# {annotation: (test, what it must be)} of VideoEncoderConfig's fields
_FIELD_TYPES = {"int": (is_int, "an integer"), "float": (is_number, "a number"),
                "str": (lambda v: isinstance(v, str), "a string"), "bool": (lambda v: isinstance(v, bool), "true or false"),
                "tuple[int, ...]": (lambda v: isinstance(v, (list, tuple)) and all(map(is_int, v)), "a list of integers")}


@dataclass
class VideoEncoderConfig:
    """Sizes of the AV-HuBERT video encoder; the defaults are AV-HuBERT Base."""

    # Front end: 3-D conv stem width, then one width and block count per ResNet stage.
    frontend_channels: int = 64
    # Average-pool each frame by this factor before the stem (not in AV-HuBERT, whose value is 1):
    # 2 shows the 88x88 crops at 44x44, a quarter of the front end's compute, for small encoders
    # trained on CPU (the quickstart's synthetic mouths; docs/quickstart.md).
    input_pool: int = 1
    resnet_channels: tuple[int, ...] = (64, 128, 256, 512)
    resnet_blocks: tuple[int, ...] = (2, 2, 2, 2)
    relu_type: str = "prelu"  # AV-HuBERT's resnet_relu_type; "relu" also supported
    # Fusion with the (all-zero) audio stream; see the module docstring.
    modality_fuse: str = "concat"  # "concat" (AV-HuBERT) or "add"
    audio_feat_dim: int = 104  # 4 stacked 26-d filterbanks; documents the checkpoint only
    # Transformer.
    embed_dim: int = 768
    layers: int = 12
    heads: int = 12
    ffn_dim: int = 3072
    layer_norm_first: bool = True  # pre-LN; AV-HuBERT Base and Large both set it
    conv_pos: int = 128  # kernel of the convolutional relative positional embedding
    conv_pos_groups: int = 16
    # Regularisation: the values of the AV-HuBERT pre-training configs. All are off in
    # eval mode; the reference runs its frozen encoder in train mode (docs/papers.md §10).
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    dropout_input: float = 0.1
    layerdrop: float = 0.05
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for f in fields(self):  # a config.json value of the wrong type is named, not a TypeError deep inside
            value = getattr(self, f.name)
            if not _FIELD_TYPES[f.type][0](value):
                raise ModelConfigError(f"video encoder: {f.name} must be {_FIELD_TYPES[f.type][1]}, got {value!r}")
        self.resnet_channels = tuple(int(c) for c in self.resnet_channels)
        self.resnet_blocks = tuple(int(b) for b in self.resnet_blocks)
        positive = {
            "frontend_channels": self.frontend_channels, "input_pool": self.input_pool, "embed_dim": self.embed_dim,
            "layers": self.layers, "heads": self.heads, "ffn_dim": self.ffn_dim,
            "conv_pos": self.conv_pos, "conv_pos_groups": self.conv_pos_groups,
        }
        for name, value in positive.items():
            if value < 1:
                raise ModelConfigError(f"video encoder: {name} must be >= 1, got {value}")
        if not self.resnet_channels or len(self.resnet_channels) != len(self.resnet_blocks):
            raise ModelConfigError(
                f"video encoder: resnet_channels {self.resnet_channels} and resnet_blocks "
                f"{self.resnet_blocks} must be non-empty and of equal length")
        if min(self.resnet_channels) < 1 or min(self.resnet_blocks) < 1:
            raise ModelConfigError("video encoder: resnet_channels and resnet_blocks must be >= 1")
        if self.embed_dim % self.heads:
            raise ModelConfigError(
                f"video encoder: embed_dim {self.embed_dim} is not divisible by heads {self.heads}")
        if self.embed_dim % self.conv_pos_groups:
            raise ModelConfigError(
                f"video encoder: embed_dim {self.embed_dim} is not divisible by "
                f"conv_pos_groups {self.conv_pos_groups}")
        if self.relu_type not in ("prelu", "relu"):
            raise ModelConfigError(f"video encoder: relu_type must be 'prelu' or 'relu', got {self.relu_type!r}")
        if self.modality_fuse not in ("concat", "add"):
            raise ModelConfigError(
                f"video encoder: modality_fuse must be 'concat' or 'add', got {self.modality_fuse!r}")
        for name in ("dropout", "attention_dropout", "activation_dropout", "dropout_input", "layerdrop"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ModelConfigError(f"video encoder: {name} must be in [0, 1), got {value}")

    @property
    def frontend_dim(self) -> int:
        """Per-frame width of the ResNet output (512 in AV-HuBERT)."""
        return self.resnet_channels[-1]

    @property
    def fused_dim(self) -> int:
        """Width after fusing with the zero audio stream (input of `layer_norm`)."""
        return 2 * self.embed_dim if self.modality_fuse == "concat" else self.embed_dim

    @classmethod
    def base(cls, **overrides) -> VideoEncoderConfig:
        """AV-HuBERT Base (e.g. base_vox_iter5): D 768, 12 layers, 12 heads, FFN 3072."""
        return replace(cls(), **overrides)

    @classmethod
    def large(cls, **overrides) -> VideoEncoderConfig:
        """AV-HuBERT Large (large_vox_iter5, the Llama-AVSR encoder): D 1024, 24 layers, 16 heads."""
        return replace(cls(embed_dim=1024, layers=24, heads=16, ffn_dim=4096), **overrides)

    @classmethod
    def tiny(cls, **overrides) -> VideoEncoderConfig:
        """A CPU-test size: every front-end width / 4, D 128, 2 layers, no dropout."""
        tiny = cls(frontend_channels=16, resnet_channels=(16, 32, 64, 128), embed_dim=128, layers=2,
                   heads=4, ffn_dim=512, conv_pos=8, conv_pos_groups=4, dropout=0.0,
                   attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0, layerdrop=0.0)
        return replace(tiny, **overrides)


# --------------------------------------------------------------------------- front end


def _activation(relu_type: str, channels: int) -> nn.Module:
    """PReLU with one slope per channel (AV-HuBERT's default) or a plain ReLU."""
    return nn.PReLU(num_parameters=channels) if relu_type == "prelu" else nn.ReLU()


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BN, identity or 1x1-conv shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int, relu_type: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = _activation(relu_type, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = _activation(relu_type, channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C_in, H, W) -> (N, C, H / stride, W / stride)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + shortcut)


class ResNetTrunk(nn.Module):
    """The 2-D ResNet-18 trunk (no stem, no classifier), applied to every frame."""

    def __init__(self, cfg: VideoEncoderConfig) -> None:
        super().__init__()
        in_channels = cfg.frontend_channels
        for index, (channels, blocks) in enumerate(zip(cfg.resnet_channels, cfg.resnet_blocks)):
            stride = 1 if index == 0 else 2
            stage = []
            for block in range(blocks):
                stage.append(BasicBlock(in_channels, channels, stride if block == 0 else 1, cfg.relu_type))
                in_channels = channels
            # layer1..layerN, the torchvision / AV-HuBERT names.
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
        self.num_stages = len(cfg.resnet_channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C0, H, W) -> (N, C_last)
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.avgpool(x).flatten(1)


class ResEncoder(nn.Module):
    """3-D conv stem + per-frame ResNet trunk; only real (unpadded) frames get computed."""

    def __init__(self, cfg: VideoEncoderConfig) -> None:
        super().__init__()
        c0 = cfg.frontend_channels
        # Index order 0..3 matters: the checkpoint names these frontend3D.{0,1,2,3}.
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, c0, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(c0),
            _activation(cfg.relu_type, c0),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        self.trunk = ResNetTrunk(cfg)
        self.out_dim = cfg.frontend_dim
        self.input_pool = cfg.input_pool

    def forward(self, video: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """video (B, T, H, W), valid (B, T) bool -> (B, T, C_last); padded frames are zero."""
        batch, frames = video.shape[:2]
        if self.input_pool > 1:
            video = F.avg_pool2d(video, self.input_pool)  # (B, T, H / pool, W / pool)
        # Zero padded frames: the stem's kernel spans 5 frames, and a lone clip sees zeros
        # (the conv's own padding) past its end, so a padded clip must see zeros too.
        x = video.masked_fill(~valid[:, :, None, None], 0.0).unsqueeze(1)  # (B, 1, T, H, W)
        x = self.frontend3D[0](x)  # (B, C0, T, H/2, W/2)
        # From here on all is per frame: keep the real frames only, as (M, C0, 1, h, w) so
        # the 3-D BatchNorm / pooling modules (and their checkpoint names) apply unchanged.
        x = x.transpose(1, 2)[valid].unsqueeze(2)  # (M, C0, 1, H/2, W/2), M = sum(lengths)
        x = self.frontend3D[1:](x).squeeze(2)  # (M, C0, H/4, W/4)
        x = self.trunk(x)  # (M, C_last)
        out = x.new_zeros(batch, frames, x.shape[-1])  # (B, T, C_last)
        out[valid] = x
        return out


class VideoFeatureExtractor(nn.Module):
    """AV-HuBERT's `SubModel` for video: ResNet front end, then a per-frame Linear to D."""

    def __init__(self, cfg: VideoEncoderConfig) -> None:
        super().__init__()
        self.resnet = ResEncoder(cfg)
        self.proj = nn.Linear(cfg.frontend_dim, cfg.embed_dim)

    def forward(self, video: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # video (B, T, H, W), valid (B, T) -> (B, T, D)
        return self.proj(self.resnet(video, valid))


# --------------------------------------------------------------------------- transformer


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d with weight normalisation over dim 2, stored as `weight_g`/`weight_v`.

    Written out (instead of torch's weight_norm / parametrizations) so the parameter names
    and shapes are those of fairseq's checkpoints: weight = v * g / ||v||, where the norm
    runs over output and input channels separately for every kernel tap.
    """

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.padding = kernel // 2
        self.weight_g = nn.Parameter(torch.empty(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        # HuBERT's init: N(0, sqrt(4 / (K * D))), and g starts at ||v|| so weight == v.
        nn.init.normal_(self.weight_v, mean=0.0, std=math.sqrt(4.0 / (kernel * channels)))
        with torch.no_grad():
            self.weight_g.copy_(torch.linalg.vector_norm(self.weight_v, dim=(0, 1), keepdim=True))

    def weight(self) -> torch.Tensor:
        norm = torch.linalg.vector_norm(self.weight_v, dim=(0, 1), keepdim=True)  # (1, 1, K)
        return self.weight_v * (self.weight_g / norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, D, T) -> (B, D, T + 1 - K % 2)
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drop the extra last step an even kernel with padding K // 2 produces."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, D, T + remove) -> (B, D, T)
        return x[:, :, : x.shape[-1] - self.remove] if self.remove else x


class SelfAttention(nn.Module):
    """Multi-head self-attention with fairseq's separate q/k/v/out projections, via SDPA.

    Separate projections keep checkpoint names and let LoRA wrap q and v individually.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        # x: (B, T, D); key_padding_mask: (B, T) True = pad, or None
        batch, frames, dim = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, h, T, D / h)
            return t.view(batch, frames, self.heads, dim // self.heads).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        # SDPA's boolean mask means "may attend"; (B, 1, 1, T) broadcasts over heads/queries.
        # Every row keeps at least one real key because lengths >= 1, so no NaN rows.
        attn_mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)  # (B, h, T, D/h)
        return self.out_proj(out.transpose(1, 2).reshape(batch, frames, dim))  # (B, T, D)


class EncoderLayer(nn.Module):
    """A wav2vec 2.0 / HuBERT transformer layer, pre-LN or post-LN."""

    def __init__(self, cfg: VideoEncoderConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.self_attn = SelfAttention(dim, cfg.heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.dropout1 = nn.Dropout(cfg.dropout)  # after attention
        self.dropout2 = nn.Dropout(cfg.activation_dropout)  # after the FFN activation
        self.dropout3 = nn.Dropout(cfg.dropout)  # after the FFN

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, D) -> (B, T, D); exact (erf) GELU like fairseq's "gelu"
        return self.dropout3(self.fc2(self.dropout2(F.gelu(self.fc1(x)))))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        # x: (B, T, D) -> (B, T, D)
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), key_padding_mask))
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.dropout1(self.self_attn(x, key_padding_mask)))
        return self.final_layer_norm(x + self._ffn(x))


class TransformerEncoder(nn.Module):
    """Conv positional embedding + transformer layers (fairseq wav2vec2 TransformerEncoder)."""

    def __init__(self, cfg: VideoEncoderConfig) -> None:
        super().__init__()
        self.layer_norm_first = cfg.layer_norm_first
        self.layerdrop = cfg.layerdrop
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(cfg.embed_dim, cfg.conv_pos, cfg.conv_pos_groups),
            SamePad(cfg.conv_pos),
            nn.GELU(),
        )
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))
        self.layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        # x: (B, T, D); padding_mask: (B, T) True = pad -> (B, T, D)
        if padding_mask is not None:
            # The positional conv spans K frames: zero padding so real frames near the end
            # see what a lone clip sees (the conv's zero padding).
            x = x.masked_fill(padding_mask[..., None], 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        for layer in self.layers:
            # LayerDrop: skip a whole layer at random in training only.
            if self.training and self.layerdrop > 0 and torch.rand(()).item() < self.layerdrop:
                continue
            x = layer(x, padding_mask)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x


# --------------------------------------------------------------------------- model


class VideoEncoder(nn.Module):
    """AV-HuBERT video-only encoder: (B, T, H, W) mouth crops -> (B, T, D) features at 25 Hz.

    Attribute names mirror the fairseq AV-HuBERT model, so `state_dict()` keys equal the
    checkpoint's (see the module docstring for what to drop or strip).
    """

    def __init__(self, cfg: VideoEncoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or VideoEncoderConfig.base()
        self.feature_extractor_video = VideoFeatureExtractor(self.cfg)
        self.layer_norm = nn.LayerNorm(self.cfg.fused_dim, eps=self.cfg.layer_norm_eps)
        self.post_extract_proj = (
            nn.Linear(self.cfg.fused_dim, self.cfg.embed_dim) if self.cfg.fused_dim != self.cfg.embed_dim else None)
        self.dropout_input = nn.Dropout(self.cfg.dropout_input)
        self.encoder = TransformerEncoder(self.cfg)
        # Input option (not a weight): each clip cut to a multiple of this many frames first, as
        # the Llama-AVSR family's single-rate datasets cut the video to a multiple of its rate
        # (Llama-AVSR `datamodule/av_dataset.py` L133-L135); the model config's `video_trim`.
        self.frame_multiple = 1
        self._init_transformer()

    def _init_transformer(self) -> None:
        """BERT-style N(0, 0.02) init of the transformer Linears (fairseq's init_bert_params);
        ResNet convs get He-normal init as in AV-HuBERT. Irrelevant once weights are loaded."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))

    @property
    def output_dim(self) -> int:
        return self.cfg.embed_dim

    def forward(self, video: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, T, H, W) float, normalised; lengths (B,) int real frame counts (None =
        all T) -> features (B, T, D) with zeros at padded frames, padding_mask (B, T) bool,
        True = pad. Real frames' features do not depend on the rest of the batch."""
        if video.dim() != 4:
            raise ValueError(f"video must be (B, T, H, W), got shape {tuple(video.shape)}")
        batch, frames = video.shape[:2]
        if lengths is None:
            lengths = torch.full((batch,), frames, dtype=torch.long, device=video.device)
        lengths = torch.as_tensor(lengths, device=video.device)
        if lengths.shape != (batch,) or lengths.is_floating_point():
            raise ValueError(f"lengths must be an int tensor of shape ({batch},), got {tuple(lengths.shape)} "
                             f"{lengths.dtype}")
        if batch and (int(lengths.min()) < 1 or int(lengths.max()) > frames):
            raise ValueError(f"lengths must lie in [1, {frames}], got {lengths.tolist()}")

        if self.frame_multiple > 1:  # a clip shorter than the multiple is kept whole
            k = self.frame_multiple
            lengths = torch.where(lengths >= k, torch.div(lengths, k, rounding_mode="floor") * k, lengths)
        padding_mask = torch.arange(frames, device=video.device)[None, :] >= lengths[:, None]  # (B, T)
        video = video.to(self.layer_norm.weight.dtype)  # the encoder's dtype (a bf16 model too)
        video_feats = self.feature_extractor_video(video, ~padding_mask)  # (B, T, D)
        if self.cfg.modality_fuse == "concat":
            # Audio first, as AV-HuBERT concatenates [audio, video]; the zero audio stream
            # is what extract_finetune builds when no audio is given.
            feats = torch.cat([torch.zeros_like(video_feats), video_feats], dim=-1)  # (B, T, 2D)
        else:
            feats = video_feats  # "add": zeros + video
        feats = self.layer_norm(feats)  # (B, T, fused)
        if self.post_extract_proj is not None:
            feats = self.post_extract_proj(feats)  # (B, T, D)
        feats = self.dropout_input(feats)
        # Skip the mask entirely for unpadded batches so SDPA can use its fastest kernels.
        mask = padding_mask if bool(padding_mask.any()) else None
        out = self.encoder(feats, mask)  # (B, T, D)
        return out.masked_fill(padding_mask[..., None], 0.0), padding_mask


# --------------------------------------------------------------------------- the encoder folder
# What `avsr pretrain-encoder` writes and `model.video_encoder` names: config.json (the encoder
# settings under "encoder", plus whatever its writer adds) and model.safetensors (the encoder's
# tensors; a writer may add its own under other prefixes, e.g. "ctc_head."). The folder appears
# whole (written through avsr.io.atomic_folder), so one that exists is complete.
FOLDER_FORMAT = "avsr-video-ctc-pretrain/1"
FOLDER_WEIGHTS = "model.safetensors"
FOLDER_CONFIG = "config.json"


def encoder_config_dict(cfg: VideoEncoderConfig) -> dict:
    """JSON-ready VideoEncoderConfig (tuples as lists; __post_init__ turns them back)."""
    return {f.name: (list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v)
            for f in fields(VideoEncoderConfig)}


def write_encoder_folder(folder: Path, state: dict[str, torch.Tensor], cfg: VideoEncoderConfig, extra: dict) -> None:
    """Fill `folder` (a fresh temporary one: the caller renames it into place)."""
    from safetensors.torch import save_file

    save_file(state, str(folder / FOLDER_WEIGHTS), metadata={"format": FOLDER_FORMAT})
    config = {"format": FOLDER_FORMAT, "encoder": encoder_config_dict(cfg), **extra}
    (folder / FOLDER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", "utf-8")


def read_encoder_folder(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of an encoder folder."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / FOLDER_CONFIG).is_file() or not (path / FOLDER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{path}: not a video encoder folder (needs {FOLDER_CONFIG} and {FOLDER_WEIGHTS})")
    config = json.loads((path / FOLDER_CONFIG).read_text("utf-8"))
    if config.get("format") != FOLDER_FORMAT:
        raise ValueError(f"{path / FOLDER_CONFIG}: format {config.get('format')!r}, expected {FOLDER_FORMAT!r}")
    return config, load_file(str(path / FOLDER_WEIGHTS))


def read_fairseq_checkpoint(path: str | Path) -> tuple[VideoEncoderConfig, dict[str, torch.Tensor], dict]:
    """(config, encoder state dict in our names, info) of an AV-HuBERT fairseq `.pt` file.

    Every tensor of the file is used or dropped by a documented rule; anything missing,
    unexpected or of the wrong shape for the encoder its config describes is refused in one
    message. Tensors keep the file's dtype (`load_state_dict` casts them). Prints the licence.
    """
    return checked_fairseq_weights(read_encoder_weights(path), path)


def checked_fairseq_weights(weights: EncoderWeights, path: str | Path
                            ) -> tuple[VideoEncoderConfig, dict[str, torch.Tensor], dict]:
    """`read_fairseq_checkpoint` of weights already read (e.g. from a Llama-AVSR checkpoint)."""
    try:
        cfg = VideoEncoderConfig(**weights.fields)
    except ModelConfigError as err:
        raise CheckpointFormatError(f"{path}: its config does not build: {err}") from None
    with torch.device("meta"):  # shapes only: no memory for the weights (Large: 1.2 GB)
        expected = {k: v.shape for k, v in VideoEncoder(cfg).state_dict().items()}
    check_encoder_weights(weights, expected, path, f"the AV-HuBERT video encoder its config describes "
                          f"(D {cfg.embed_dim}, {cfg.layers} layers, FFN {cfg.ffn_dim}, {cfg.heads} heads)")
    print_licence_notice()
    return cfg, weights.tensors, weights.info


def load_video_encoder(path: str | Path) -> VideoEncoder:
    """The VideoEncoder of an encoder folder or of an AV-HuBERT fairseq `.pt` file, in eval mode
    (other writers' tensors in a folder are left out). Weights from AV-HuBERT print its licence."""
    if Path(path).is_file():
        cfg, state = read_fairseq_checkpoint(path)[:2]
    else:
        config, state = read_encoder_folder(path)
        cfg = VideoEncoderConfig(**config["encoder"])
        if config.get("source") == FOLDER_SOURCE:
            print_licence_notice()
    encoder = VideoEncoder(cfg)
    own = encoder.state_dict().keys()
    encoder.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return encoder.eval()


def load_for_model(path: str | Path, cfg) -> VideoEncoder:
    """The encoder table's loader (avsr.models.encoders): the video encoder with the model config's
    input option `video_trim` (cut each clip to a multiple of the one video rate)."""
    encoder = load_video_encoder(path)
    encoder.frame_multiple = cfg.video_rates[0] if cfg.video_trim else 1
    return encoder
