"""The hierarchical signatures of the synthetic benchmark's stand-in generators.

A fake clip is built in four layers, one per attribution level, so that every
level of the taxonomy has something to learn and nothing more:

* TASK-L  content: T2V renders a procedural scene (gradient, drifting
  sinusoidal textures, moving soft shapes); I2V animates one real still frame
  (slow pan, zoom, rotation and a drifting warp). Both are functions of a
  continuous content time tau, so a temporal style can re-time them.
* TEAM-L  temporal style: one per team (frame holds, eased speed, stutter, ...),
  see STYLES / TEAM_STYLES.
* GEN-L   the style's parameter (period, strength) and a faint colour cast.
* SD-L    a faint luminance tile fixed in frame coordinates (a "decoder
  pattern"), seeded by the backbone name; generators without SD get none.

Generators outside the built-in table get a signature derived from their task,
SD backbone and team (seeded by name), so any taxonomy file can be synthesised.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from saga.taxonomy import Generator

Render = Callable[[np.ndarray], np.ndarray]  # content times (T,) -> (T, H, W, 3) float32, 0..255
TWO_PI = 2.0 * np.pi


def stable_int(*parts: object) -> int:
    """A seed that is the same in every process (Python's hash() is salted)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


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


# -- TASK-L: content ------------------------------------------------------------
def t2v_scene(rng: np.random.Generator, h: int, w: int) -> Render:
    """A procedural scene: gradient + drifting sinusoid textures + bouncing soft shapes."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c1, c2 = rng.uniform(25, 230, (2, 3)).astype(np.float32)
    ang = rng.uniform(0, TWO_PI)
    ramp = (np.cos(ang) * (xx / w - 0.5) + np.sin(ang) * (yy / h - 0.5) + 0.5).astype(np.float32)[..., None]
    base = c1 + (c2 - c1) * ramp
    k = 6
    freq = np.exp(rng.uniform(np.log(0.012), np.log(0.2), k))
    theta = rng.uniform(0, TWO_PI, k)
    fy, fx = freq * np.sin(theta), freq * np.cos(theta)
    colours = (rng.normal(0, 14, (k, 3)) / (1 + 4 * freq[:, None])).astype(np.float32)
    phase = rng.uniform(0, TWO_PI, k)
    cam = rng.uniform(-1.0, 1.0, 2)
    bx = TWO_PI * np.arange(w)[:, None] * fx  # (w, k): sin(a + b) = sin a cos b + cos a sin b
    right = np.concatenate([np.cos(bx)[..., None] * colours, np.sin(bx)[..., None] * colours], 1)
    right = right.transpose(1, 0, 2).reshape(2 * k, w * 3).astype(np.float32)
    n = int(rng.integers(2, 6))
    shapes = dict(
        c0=rng.uniform(0, 1, (n, 2)) * (h, w), vel=rng.uniform(-1.8, 1.8, (n, 2)),
        r=rng.uniform(0.08, 0.3, n) * min(h, w), aspect=rng.uniform(0.6, 1.6, n),
        square=rng.random(n) < 0.4, colour=rng.uniform(10, 245, (n, 3)).astype(np.float32),
    )

    def frame(tau: float) -> np.ndarray:
        ay = TWO_PI * (np.arange(h)[:, None] * fy + (fx * cam[1] + fy * cam[0]) * tau) + phase  # (h, k)
        left = np.concatenate([np.sin(ay), np.cos(ay)], 1).astype(np.float32)
        img = base + np.einsum("hk,kw->hw", left, right).reshape(h, w, 3)  # no BLAS: its threads stall
        for i in range(n):
            _paint_shape(img, tau, {key: v[i] for key, v in shapes.items()})
        return img

    return lambda taus: np.stack([frame(float(t)) for t in taus])


def _paint_shape(img: np.ndarray, tau: float, s: dict) -> None:
    """Alpha-blend one soft-edged, shaded ellipse or rectangle that bounces off the borders."""
    h, w = img.shape[:2]
    cy, cx = _bounce(s["c0"][0] + s["vel"][0] * tau, h), _bounce(s["c0"][1] + s["vel"][1] * tau, w)
    ry, rx = s["r"] * s["aspect"], s["r"] / s["aspect"]
    y0, y1 = max(int(cy - ry - 2), 0), min(int(cy + ry + 3), h)
    x0, x1 = max(int(cx - rx - 2), 0), min(int(cx + rx + 3), w)
    if y1 <= y0 or x1 <= x0:
        return
    dy = ((np.arange(y0, y1, dtype=np.float32) - cy) / ry)[:, None]
    dx = ((np.arange(x0, x1, dtype=np.float32) - cx) / rx)[None, :]
    d = np.maximum(np.abs(dx), np.abs(dy)) if s["square"] else np.sqrt(dx * dx + dy * dy)
    alpha = np.clip((1 - d) * min(ry, rx) / 1.5 + 0.5, 0, 1)[..., None]
    shade = (1 + 0.18 * np.clip(dy, -1, 1))[..., None]
    patch = img[y0:y1, x0:x1]
    patch += alpha * (s["colour"] * shade - patch)


def _bounce(x: float, length: float) -> float:
    return float(length - abs(x % (2 * length) - length))


def i2v_scene(rng: np.random.Generator, h: int, w: int, still: np.ndarray, tau_max: float) -> Render:
    """Animate a real still: slow pan toward a random point, zoom, rotation, drifting warp."""
    hs, ws = still.shape[:2]
    ch = rng.uniform(0.45, 0.7) * min(hs, ws * h / w)
    s0 = ch / h  # source pixels per output pixel
    lo = np.array([ch, ch * w / h]) * 0.6
    hi = np.array([hs, ws]) - lo
    start, end = (rng.uniform(lo, np.maximum(hi, lo + 1e-3)) for _ in range(2))
    vel = (end - start) / tau_max * rng.uniform(0.3, 1.0)
    vel *= min(1.0, 1.2 * s0 / max(np.hypot(*vel), 1e-6))  # at most ~1.2 output px per frame
    zoom, rot = rng.uniform(-0.004, 0.004), rng.uniform(-0.003, 0.003)
    amp, lam, drift, wph = (float(rng.uniform(a, b)) for a, b in ((0.5, 1.5), (25, 60), (0.1, 0.25), (0, TWO_PI)))
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    v, u = v - h / 2, u - w / 2

    def frame(tau: float) -> np.ndarray:
        uw = u + amp * np.sin(v * (TWO_PI / lam) + drift * tau)
        vw = v + amp * np.sin(u * (TWO_PI / lam) + (drift * tau + wph))
        s, c, sn = float(s0 * (1 + zoom * tau)), float(np.cos(rot * tau)), float(np.sin(rot * tau))
        cy, cx = (float(x) for x in start + vel * tau)  # python floats keep the grids float32
        return bilinear(still, cy + s * (sn * uw + c * vw), cx + s * (c * uw - sn * vw))

    return lambda taus: np.stack([frame(float(t)) for t in taus])


# -- TEAM-L: temporal styles -----------------------------------------------------
@dataclass
class Clip:
    """What a style needs: the content, how many frames to output, and randomness."""

    render: Render
    n: int
    rng: np.random.Generator
    fresh: Callable[[], Render]  # a new, unrelated scene of the same task (for cuts)

    def at(self, taus: np.ndarray) -> np.ndarray:
        """Render content times, each distinct time once (held frames are exact copies)."""
        uniq, inv = np.unique(np.asarray(taus, dtype=np.float64), return_inverse=True)
        return self.render(uniq)[inv]

    @property
    def t(self) -> np.ndarray:
        return np.arange(self.n, dtype=np.float64)


def hold(c: Clip, k: float) -> np.ndarray:
    """Every k-th frame is shown k times (low-fps generation, duplicated to the output rate)."""
    k = int(k)
    return c.at(np.floor((c.t + c.rng.integers(k)) / k) * k)


def ease(c: Clip, period: float) -> np.ndarray:
    """Speed oscillates smoothly (0.15x..1.85x) with the given period: eased keyframe motion."""
    ph = c.rng.uniform(0, TWO_PI)
    return c.at(c.t + 0.85 * period / TWO_PI * (np.sin(TWO_PI * c.t / period + ph) - np.sin(ph)))


def stutter(c: Clip, p: float) -> np.ndarray:
    """Slow motion broken by random jumps (probability p per frame), same mean speed."""
    big = 3.0
    jump = c.rng.random(c.n - 1) < p
    jump[c.rng.integers(c.n - 1)] = True  # at least one, or a short clip may show none
    steps = np.where(jump, big, (1 - p * big) / (1 - p))
    return c.at(np.concatenate([[0.0], np.cumsum(steps)]))


def boomerang(c: Clip, length: float) -> np.ndarray:
    """Plays forward then backward every `length` frames (ping-pong)."""
    t = c.t + c.rng.integers(2 * int(length))
    return c.at(length - np.abs(t % (2 * length) - length))


def loop(c: Clip, length: float) -> np.ndarray:
    """A short loop: content jumps back to its start every `length` frames."""
    return c.at((c.t + c.rng.integers(int(length))) % length)


def decay(c: Clip, r: float) -> np.ndarray:
    """Motion that starts fast and dies out geometrically (the clip freezes)."""
    return c.at(2.5 * (1 - r ** c.t) / (1 - r))


def cut(c: Clip, where: float) -> np.ndarray:
    """A hard cut to a new scene around `where` of the clip (multi-shot generation)."""
    k = int(np.clip(round(c.n * (where + c.rng.uniform(-0.15, 0.15))), 1, c.n - 1))
    return np.concatenate([c.at(c.t[:k]), c.fresh()(c.t[k:] - c.t[k])])


def flicker(c: Clip, period: float) -> np.ndarray:
    """Global brightness pulses (+-10 %) with the given period."""
    gain = 1 + 0.10 * np.sin(TWO_PI * c.t / period + c.rng.uniform(0, TWO_PI))
    return c.at(c.t) * gain.astype(np.float32)[:, None, None, None]


def trail(c: Clip, alpha: float) -> np.ndarray:
    """Fast motion (2x) smeared by recursive temporal smoothing (EMA): moving edges leave trails."""
    frames = c.at(2 * c.t)
    for i in range(1, c.n):
        frames[i] = alpha * frames[i - 1] + (1 - alpha) * frames[i]
    return frames


def crossfade(c: Clip, k: float) -> np.ndarray:
    """Keyframes every k frames, the frames between them linear blends (naive interpolation)."""
    k = int(k)
    keys = c.at(np.arange(0, c.n + k, k))
    idx, frac = np.divmod(c.t.astype(int), k)
    frac = (frac / k).astype(np.float32)[:, None, None, None]
    return keys[idx] * (1 - frac) + keys[idx + 1] * frac


def shake(c: Clip, amp: float) -> np.ndarray:
    """Frames generated independently: per-frame jitter of +-amp px and fresh grain."""
    a = int(amp)
    padded = np.pad(c.at(c.t), ((0, 0), (a, a), (a, a), (0, 0)), mode="edge")
    h, w = padded.shape[1] - 2 * a, padded.shape[2] - 2 * a
    off = c.rng.integers(0, 2 * a + 1, (c.n, 2))
    out = np.stack([padded[i, y:y + h, x:x + w] for i, (y, x) in enumerate(off)])
    return out + 2.0 * c.rng.standard_normal(out.shape, dtype=np.float32)


def ramp(c: Clip, top: float) -> np.ndarray:
    """Speed ramps up linearly from 0.2x to `top`x over the clip (the mirror image of decay)."""
    return c.at(0.2 * c.t + (top - 0.2) * c.t ** 2 / (2 * max(c.n - 1, 1)))


def breathe(c: Clip, period: float) -> np.ndarray:
    """The frame zooms in and out by up to 12 % with the given period."""
    frames = c.at(c.t)
    h, w = frames.shape[1:3]
    ph = c.rng.uniform(0, TWO_PI)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(c.n):
        s = 1 / (1 + 0.06 * (1 - np.cos(TWO_PI * i / period + ph)))
        frames[i] = bilinear(frames[i], (yy - h / 2) * s + h / 2, (xx - w / 2) * s + w / 2)
    return frames


def soften(c: Clip, strength: float) -> np.ndarray:
    """Every other frame is blurred (a sharp/soft alternation of cascaded upsampling)."""
    frames = c.at(c.t)
    odd = blur = frames[1::2]
    for _ in range(2):  # two 3x3 box passes: a 5x5 tent
        pad = np.pad(blur, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        blur = (pad[:, :-2] + pad[:, 1:-1] + pad[:, 2:]) / 3
        blur = (blur[:, :, :-2] + blur[:, :, 1:-1] + blur[:, :, 2:]) / 3
    frames[1::2] = (1 - strength) * odd + strength * blur
    return frames


STYLES: dict[str, Callable[[Clip, float], np.ndarray]] = {
    f.__name__: f for f in (hold, ease, stutter, boomerang, loop, decay, cut,
                            flicker, trail, crossfade, shake, ramp, breathe, soften)
}
TEAM_STYLES = {
    "Tencent AI Lab": "hold", "Shanghai AI Lab": "ease", "HPC-AI Tech": "stutter",
    "Pika Labs": "boomerang", "Moonvalley": "loop", "Runway": "decay", "OpenAI": "cut",
    "Alibaba": "flicker", "Stability AI": "trail", "Cerspense": "crossfade", "CompVis": "shake",
    "Morph Studio": "ramp", "Hotshot": "breathe", "NUS Show Lab": "soften",
}
PARAM_CHOICES = {
    "hold": (2, 3, 4), "ease": (6, 8, 10), "stutter": (0.15, 0.25), "boomerang": (6, 8), "loop": (5, 7),
    "decay": (0.8, 0.88), "cut": (0.4, 0.6), "flicker": (4, 6, 8), "trail": (0.4, 0.6),
    "crossfade": (2, 3), "shake": (1, 2), "ramp": (2.0, 2.5), "breathe": (6, 10), "soften": (0.7, 1.0),
}

# -- GEN-L: the built-in generators' parameters (style parameter, colour cast?) ---
GEN_PARAMS: dict[str, tuple[float, bool]] = {
    "syn-videocrafter": (2, False), "syn-crafter": (3, False), "syn-dynamicrafter": (2, True),
    "syn-latte": (6, False), "syn-lavie": (9, True), "syn-seine": (6, True),
    "syn-opensora": (0.2, False), "syn-pika": (8, False), "syn-moonvalley": (7, False),
    "syn-i2vgen-xl": (4, True), "syn-modelscope": (7, True), "syn-svd": (0.5, True),
    "syn-zeroscope": (2, True), "syn-sd": (2, True), "syn-morphstudio": (2.0, True),
    "syn-hotshot": (8, True), "syn-show-1": (0.85, True), "syn-gen2": (0.85, True), "syn-sora": (0.5, True),
}
CAST_LEVELS = 3.0  # max colour cast, gray levels


# -- SD-L: decoder patterns --------------------------------------------------------
SD_PERIODS = {"SD 1.4": 8, "SD 1.5": 8, "SD 2.1": 8, "SDXL": 16}


def sd_pattern(sd: str | None, h: int, w: int, amplitude: float) -> np.ndarray:
    """A zero-mean luminance tile (std = amplitude) repeated over the frame; zeros without SD."""
    if sd is None or amplitude <= 0:
        return np.zeros((h, w, 1), np.float32)
    p = SD_PERIODS.get(sd, 8)
    tile = np.random.default_rng(stable_int("sd", sd)).normal(0, 1, (p, p))
    tile = (tile - tile.mean()) / tile.std() * amplitude
    reps = (-(-h // p), -(-w // p))
    return np.tile(tile, reps)[:h, :w, None].astype(np.float32)


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
                pick_still: Callable[[np.random.Generator], np.ndarray], sd_amplitude: float) -> np.ndarray:
    """One clip of a generator as uint8 (n, H, W, 3): content -> style -> cast -> SD pattern."""
    h, w = size
    content_rng, style_rng = rng.spawn(2)

    def scene(r: np.random.Generator) -> Render:
        if sig.generator.task == "I2V":
            return i2v_scene(r, h, w, pick_still(r), tau_max=2 * n + 4)  # styles may re-time up to 2x
        return t2v_scene(r, h, w)

    clip = Clip(scene(content_rng), n, style_rng, fresh=lambda: scene(content_rng.spawn(1)[0]))
    frames = STYLES[sig.style](clip, sig.param)
    frames += np.asarray(sig.cast, np.float32) + sd_pattern(sig.generator.sd, h, w, sd_amplitude)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)
