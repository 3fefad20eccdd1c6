"""Render a 96x96 grayscale mouth region of interest from mouth-shape parameters.

The mouth is drawn from a few analytic shapes (outer lip ellipses with a cupid's bow, the
inner opening, teeth, tongue, a lip line when closed) on a lit, textured skin patch, with
each speaker's own appearance, a little head motion and camera noise. Everything is
vectorised over frames: one utterance is rendered in one pass of numpy array operations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from avsr.synth.visemes import PARAMS

ROI_SIZE = 96


@dataclass(frozen=True)
class Appearance:
    """How one speaker's mouth region looks. Gray levels are 0-255; lengths in pixels."""

    skin: float
    lip: float
    interior: float
    teeth: float
    tongue: float
    lip_thickness: float  # scales both lips
    mouth_half_width: float  # neutral mouth, corner to centre
    centre_x: float
    centre_y: float
    articulation: float  # how wide this speaker opens
    light_angle: float  # radians, direction the light comes from
    light_strength: float  # relative brightness change across the patch
    texture_seed: int
    camera_noise: float  # std of per-pixel noise

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Appearance":
        skin = rng.uniform(95, 195)
        return cls(
            skin=skin,
            lip=skin - rng.uniform(28, 60),
            interior=rng.uniform(12, 35),
            teeth=rng.uniform(195, 240),
            tongue=rng.uniform(80, 120),
            lip_thickness=rng.uniform(0.8, 1.3),
            mouth_half_width=rng.uniform(23, 30),
            centre_x=ROI_SIZE / 2 + rng.uniform(-4, 4),
            centre_y=ROI_SIZE / 2 + rng.uniform(-3, 5),
            articulation=rng.uniform(0.8, 1.2),
            light_angle=rng.uniform(0, 2 * np.pi),
            light_strength=rng.uniform(0.0, 0.25),
            texture_seed=int(rng.integers(2**31)),
            camera_noise=rng.uniform(1.5, 4.0),
        )

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def head_motion(n_frames: int, rng: np.random.Generator, amplitude: float = 1.5) -> np.ndarray:
    """Smooth per-frame (dx, dy, angle, scale) jitter, (n_frames, 4): sums of slow sinusoids."""
    t = np.arange(n_frames)[:, None] / 25.0  # (T, 1)
    freqs = rng.uniform(0.15, 0.9, size=(2, 4))  # two components per motion channel
    phases = rng.uniform(0, 2 * np.pi, size=(2, 4))
    wave = np.sin(2 * np.pi * freqs[0] * t + phases[0]) + 0.5 * np.sin(2 * np.pi * freqs[1] * t + phases[1])
    scale = np.array([amplitude, amplitude, np.deg2rad(2.5), 0.025]) / 1.5
    motion = wave * scale  # (T, 4)
    motion[:, 3] += 1.0
    return motion


def _skin_texture(seed: int, size: int) -> np.ndarray:
    """A fixed, smooth low-contrast texture for one speaker's skin, (size, size)."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(size // 8 + 2, size // 8 + 2))
    fine = np.kron(coarse, np.ones((8, 8)))[:size, :size]
    # Box-blur the blocks away.
    kernel = np.ones(9) / 9
    fine = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 0, fine)
    fine = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, fine)
    return fine / (fine.std() + 1e-6)


def _ellipse(u: np.ndarray, v: np.ndarray, half_u, half_v) -> np.ndarray:
    """Anti-aliased coverage (0-1) of the ellipse (u/a)^2 + (v/b)^2 <= 1 on the pixel grid.

    Uses the first-order distance to the edge, f / |grad f|, so thin ellipses stay
    sharp along their whole length.
    """
    f = (u / half_u) ** 2 + (v / half_v) ** 2 - 1.0
    grad = 2.0 * np.sqrt((u / half_u**2) ** 2 + (v / half_v**2) ** 2) + 1e-6
    return np.clip(0.5 - f / grad, 0.0, 1.0)


def render_mouth(shape: np.ndarray, look: Appearance, motion: np.ndarray | None = None,
                 rng: np.random.Generator | None = None, size: int = ROI_SIZE) -> np.ndarray:
    """Frames for per-frame mouth parameters.

    shape: (T, len(PARAMS)) in [0, 1]; motion: (T, 4) from `head_motion` (None = still);
    rng: camera noise source (None = noise-free). Returns (T, size, size) uint8.
    """
    n = shape.shape[0]
    p = {name: shape[:, i, None, None].astype(np.float32) for i, name in enumerate(PARAMS)}  # each (T,1,1)
    if motion is None:
        motion = np.tile(np.array([0.0, 0.0, 0.0, 1.0]), (n, 1))
    dx, dy, angle, scale = (motion[:, i, None, None].astype(np.float32) for i in range(4))

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # (H, W)
    x = xs[None] - (look.centre_x + dx)
    y = ys[None] - (look.centre_y + dy)
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * x + sin * y) / scale  # (T, H, W) mouth coordinates, px
    v = (-sin * x + cos * y) / scale

    # Geometry (px). The jaw moves the lower lip more than the upper one.
    half_w = look.mouth_half_width * (0.78 + 0.44 * p["width"]) * (1.0 - 0.30 * p["round"])
    opening = look.articulation * 24.0 * p["open"]  # full height of the inner opening
    protrude = 1.0 + 0.35 * p["round"]
    upper_t = 6.5 * look.lip_thickness * protrude
    lower_t = 8.5 * look.lip_thickness * protrude
    bow = 1.0 - 0.18 * np.exp(-(u / (0.12 * half_w)) ** 2) + 0.10 * np.exp(-((np.abs(u) - 0.28 * half_w) / (0.12 * half_w)) ** 2)
    upper_h = (0.3 * opening + upper_t) * bow
    lower_h = 0.7 * opening + lower_t
    vert = np.where(v < 0, upper_h, lower_h)
    outer = _ellipse(u, v, half_w, vert)

    inner_hw = np.maximum(half_w * (0.86 - 0.45 * p["round"]), 0.55 * opening)
    inner_hh = opening / 2 + 1e-3
    inner_c = 0.2 * opening
    inner = _ellipse(u, v - inner_c, inner_hw, inner_hh) * np.clip(opening, 0.0, 1.0)

    top = inner_c - inner_hh  # top edge of the opening
    teeth_h = p["teeth"] * np.minimum(4.5, 1.3 * inner_hh)
    teeth_span = np.clip((0.75 * inner_hw - np.abs(u)) + 0.5, 0.0, 1.0)
    upper_teeth = np.clip(top + teeth_h - v + 0.5, 0.0, 1.0) * teeth_span
    lower_teeth = np.clip(v - (inner_c + inner_hh - 0.5 * teeth_h) + 0.5, 0.0, 1.0) * teeth_span * (p["teeth"] > 0.7)
    teeth = np.clip(upper_teeth + lower_teeth, 0.0, 1.0) * inner

    tongue_cy = inner_c + inner_hh * (0.9 - 0.8 * p["tongue"])
    tongue_hh = 0.6 * inner_hh * p["tongue"] + 1e-3
    tongue = _ellipse(u, v - tongue_cy, 0.55 * inner_hw, tongue_hh) * inner * np.clip(p["tongue"] * 2, 0, 1)

    # Skin: light gradient, texture, a shadow under the lower lip.
    light = 1.0 + look.light_strength * (np.cos(look.light_angle) * (xs - size / 2) + np.sin(look.light_angle) * (ys - size / 2)) / (size / 2)
    skin = look.skin * light[None] + 4.0 * _skin_texture(look.texture_seed, size)[None]
    shadow = np.exp(-((v - lower_h - 3.0) / 3.0) ** 2) * np.clip(1.1 * half_w - np.abs(u), 0.0, 1.0)
    img = skin - 16.0 * shadow

    # Lips, brighter along their middle (more so when protruded).
    upper_mid = -(0.3 * opening + upper_t / 2)
    lower_mid = 0.7 * opening + lower_t / 2
    shine = np.exp(-((v - np.where(v < 0, upper_mid, lower_mid)) / 2.5) ** 2)
    lips = look.lip * light[None] + (8.0 + 14.0 * p["round"]) * shine
    img = img + outer * (lips - img)
    closed_line = np.exp(-(v / 0.9) ** 2) * np.clip(0.85 * half_w - np.abs(u), 0.0, 1.0) * np.clip(1.0 - opening, 0.0, 1.0)
    img = img - 0.45 * (look.lip - look.interior) * closed_line * outer
    img = img + inner * (look.interior - img)
    img = img + teeth * (look.teeth - img)
    img = img + tongue * (look.tongue - img)

    if rng is not None:
        gain = 1.0 + 0.015 * rng.standard_normal((n, 1, 1))
        img = img * gain + rng.normal(0.0, look.camera_noise, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
