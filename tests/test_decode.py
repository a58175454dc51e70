"""decode_video: right frames from decord and PyAV, fallbacks, and one-line DecodeErrors.

Every test video encodes its frame index as a flat brightness level (STEP * index), so a
test can tell exactly WHICH frames came back.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

import saga.pipeline.decode as decode_mod
from saga.errors import DecodeError, SagaError
from saga.pipeline.decode import Clip, decode_video, probe_path
from saga.pipeline.sampling import SamplingPolicy

STEP = 6
FPS = 10
H, W = 48, 64


def make_video(path: Path, n: int = 40, codec: str = "libx264", pix: str = "yuv420p",
               options: dict | None = None) -> Path:
    """A tiny video whose frame i is flat grey at level STEP * i."""
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream(codec, rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, pix
        for i in range(n):
            img = np.full((H, W, 3), i * STEP, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def frame_ids(clip: Clip) -> np.ndarray:
    """Recover the (W, T) source indices from brightness; assert the frames really are flat."""
    means = clip.frames.astype(np.float64).mean(axis=(2, 3, 4))
    ids = np.rint(means / STEP).astype(np.int64)
    assert np.all(np.abs(means - ids * STEP) < 2.5), means
    return ids


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    v = {
        "mp4": make_video(d / "h264.mp4"),
        "avi": make_video(d / "mjpeg.avi", codec="mjpeg", pix="yuvj420p"),
        "mov": make_video(d / "mjpeg.mov", codec="mjpeg", pix="yuvj420p"),
        "gif": make_video(d / "anim.gif", codec="gif", pix="gray"),
        "webm": make_video(d / "vp9.webm", codec="libvpx-vp9"),
        "short": make_video(d / "short.mp4", n=10),
        "faststart": make_video(d / "faststart.mp4", options={"movflags": "faststart"}),
    }
    return v


@pytest.mark.parametrize("kind", ["mp4", "avi", "mov", "webm"])
def test_decord_returns_the_centred_window(videos: dict[str, Path], kind: str) -> None:
    clip = decode_video(videos[kind], SamplingPolicy(frames=8))
    assert clip.backend == "decord"
    assert clip.frames.shape == (1, 8, H, W, 3) and clip.frames.dtype == np.uint8
    assert clip.n_frames == 40 and clip.fps == pytest.approx(FPS)
    assert frame_ids(clip)[0].tolist() == list(range(16, 24))
    assert clip.mask.all()
    assert clip.timestamps.dtype == np.float32
    np.testing.assert_allclose(clip.timestamps[0], np.arange(16, 24) / FPS, atol=1e-4)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_multi_window_uniform_frames_match_indices(videos: dict[str, Path], backend: str, kind: str) -> None:
    policy = SamplingPolicy(frames=6, mode="uniform", windows=3)
    idx, mask = policy.indices(40)
    clip = decode_video(videos[kind], policy, backend=backend)
    assert clip.backend == backend and clip.n_frames == 40
    assert clip.frames.shape == (3, 6, H, W, 3)
    assert np.array_equal(frame_ids(clip), idx) and np.array_equal(clip.mask, mask)
    np.testing.assert_allclose(clip.timestamps, idx / FPS, atol=1e-4)


@pytest.mark.parametrize("kind", ["mp4", "avi", "mov", "webm", "gif"])
def test_pyav_backend_matches_decord_choice(videos: dict[str, Path], kind: str) -> None:
    clip = decode_video(videos[kind], SamplingPolicy(frames=8), backend="pyav")
    assert clip.backend == "pyav" and clip.n_frames == 40 and clip.fps == pytest.approx(FPS)
    assert frame_ids(clip)[0].tolist() == list(range(16, 24))
    np.testing.assert_allclose(clip.timestamps[0], np.arange(16, 24) / FPS, atol=1e-4)


def test_gif_falls_back_to_pyav(videos: dict[str, Path]) -> None:
    clip = decode_video(videos["gif"], SamplingPolicy(frames=4, windows=2))
    assert clip.backend == "pyav"
    assert np.array_equal(frame_ids(clip), SamplingPolicy(frames=4, windows=2).indices(40)[0])
    with pytest.raises(DecodeError, match="decord"):
        decode_video(videos["gif"], SamplingPolicy(frames=4), backend="decord")


def test_truncated_avi_decord_overcounts_then_pyav_decodes_what_is_there(
        videos: dict[str, Path], tmp_path: Path) -> None:
    """decord reports a frame count it cannot deliver (get_batch fails): PyAV must take over."""
    data = videos["avi"].read_bytes()
    bad = tmp_path / "cut.avi"
    bad.write_bytes(data[: int(len(data) * 0.3)])
    clip = decode_video(bad, SamplingPolicy(frames=16))
    assert clip.backend == "pyav"
    assert 0 < clip.n_frames < 16  # the header claims 40; only what decodes counts
    ids = frame_ids(clip)[0]
    n = clip.n_frames
    assert ids.tolist() == list(range(n)) + [n - 1] * (16 - n)
    assert clip.mask[0].sum() == n


def test_truncated_faststart_mp4_uses_frames_that_decoded(videos: dict[str, Path], tmp_path: Path) -> None:
    data = videos["faststart"].read_bytes()
    bad = tmp_path / "cut_fs.mp4"
    bad.write_bytes(data[: int(len(data) * 0.8)])
    assert av.open(str(bad)).streams.video[0].frames == 40  # the index still claims 40
    policy = SamplingPolicy(frames=4)
    clip = decode_video(bad, policy)
    assert clip.backend == "pyav" and 4 <= clip.n_frames < 40
    assert np.array_equal(frame_ids(clip), policy.indices(clip.n_frames)[0])


def test_short_video_is_padded_with_last_frame(videos: dict[str, Path]) -> None:
    for backend in ("auto", "pyav"):
        clip = decode_video(videos["short"], SamplingPolicy(frames=16), backend=backend)
        assert clip.n_frames == 10 and clip.frames.shape == (1, 16, H, W, 3)
        assert frame_ids(clip)[0].tolist() == list(range(10)) + [9] * 6
        assert clip.mask[0].tolist() == [True] * 10 + [False] * 6
        assert np.all(clip.timestamps[0, 10:] == clip.timestamps[0, 9])
        assert np.array_equal(clip.frames[0, 9], clip.frames[0, 15])


def _bad_inputs(src: Path, d: Path) -> dict[str, tuple[Path, str]]:
    """Every kind of broken input, with a fragment its message must contain."""
    data = src.read_bytes()
    empty = d / "empty.mp4"
    empty.write_bytes(b"")
    trunc = d / "trunc.mp4"
    trunc.write_bytes(data[: int(len(data) * 0.3)])
    text = d / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    folder = d / "x.mp4"
    folder.mkdir()
    link = d / "gone.mp4"
    link.symlink_to(d / "does_not_exist.mp4")
    missing = d / "missing.mp4"
    zeroed = d / "zeroed.mp4"  # valid header and index, every byte of frame data zeroed
    fs = make_video(d / "fs.mp4", n=20, options={"movflags": "faststart"}).read_bytes()
    mdat = fs.index(b"mdat") + 4
    zeroed.write_bytes(fs[:mdat] + bytes(len(fs) - mdat))
    audio = d / "audio.mp4"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for k in range(8):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, k * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return {
        "empty": (empty, "empty file (0 bytes)"),
        "truncated": (trunc, "truncated"),
        "text": (text, "not a video"),
        "directory": (folder, "is a directory, not a video file"),
        "broken_link": (link, "broken link"),
        "missing": (missing, "file not found"),
        "zeroed": (zeroed, "decoded 0 frames"),
        "audio_only": (audio, "no video stream"),
    }


def test_every_bad_input_is_a_one_line_decode_error(videos: dict[str, Path], tmp_path: Path,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    cases = _bad_inputs(videos["mp4"], tmp_path)
    capfd.readouterr()
    for name, (path, fragment) in cases.items():
        for backend in ("auto", "pyav", "decord"):
            with pytest.raises(DecodeError) as info:  # any other exception type fails the test
                decode_video(path, SamplingPolicy(frames=8), backend=backend)
            msg = str(info.value)
            assert "\n" not in msg and len(msg) < 400, (name, msg)
            assert str(path) in msg, (name, msg)
            if backend != "decord":
                assert fragment in msg, (name, backend, msg)
            assert info.value.reason in msg and info.value.path == path  # type: ignore[attr-defined]
    assert capfd.readouterr().err == ""  # decord's C++ log lines and FFmpeg noise are silenced


def test_probe_path_accepts_a_good_file(videos: dict[str, Path]) -> None:
    probe_path(videos["mp4"])


def test_unreadable_file(videos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "locked.mp4"
    target.write_bytes(videos["mp4"].read_bytes())

    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(decode_mod, "open", deny, raising=False)  # works even when run as root
    with pytest.raises(DecodeError, match="permission denied"):
        decode_video(target, SamplingPolicy())


def test_a_denied_video_under_a_long_path_keeps_its_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason was cut to its first 300 characters: under a long path "... chmod a+r PATH and rerun" lost
    the end of its path and the advice. Now the middle of the path goes, the fix at the end stays."""
    folder = tmp_path.joinpath(*[f"{i}-{'x' * 90}" for i in range(4)])
    folder.mkdir(parents=True)
    target = folder / "locked.mp4"
    target.write_bytes(b"not read")

    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(decode_mod, "open", deny, raising=False)  # works even when run as root
    monkeypatch.setattr(decode_mod.os, "access", lambda *a, **k: True)  # every folder searchable: the file's fault
    with pytest.raises(DecodeError) as info:
        probe_path(target)
    reason = info.value.reason  # type: ignore[attr-defined]
    assert len(decode_mod.denied_reason(target)) > 300 and len(reason) == 300
    assert reason.startswith("permission denied (file is not readable); chmod a+r /")
    assert reason.endswith("/locked.mp4 and rerun") and " … " in reason
    assert str(info.value) == f"{target}: {reason}"  # the message still names the whole path first


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file_real_chmod(videos: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "locked.mp4"
    target.write_bytes(videos["mp4"].read_bytes())
    target.chmod(0)
    try:
        with pytest.raises(DecodeError, match="permission denied"):
            probe_path(target)
    finally:
        target.chmod(0o644)


def test_unknown_backend_is_a_saga_error(videos: dict[str, Path]) -> None:
    with pytest.raises(SagaError, match="backend"):
        decode_video(videos["mp4"], SamplingPolicy(), backend="opencv")


# --- which frames, which way up, which times: the same whichever backend decodes ------------------------------

def _indexed(path: Path, fmt: str, codec: str, n: int = 40, options: dict | None = None, rotation: int = 0,
             size: tuple[int, int] = (H, W), first_pts: int = 0) -> Path:
    """Frame i shows i in binary (white/black blocks of 8 columns in rows 8-23) and a red band along the top
    of the coded picture."""
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=FPS, options=options or {})
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        if rotation:
            s.set_display_rotation(rotation)
        for i in range(n):
            img = np.full((*size, 3), 128, np.uint8)
            for bit in range(6):
                img[8:24, 8 * bit:8 * bit + 8] = 255 if i >> bit & 1 else 0
            img[:4, :, 1:] = 0
            img[:4, :, 0] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = first_pts + i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path


def _ids(clip: Clip) -> list[int]:
    blocks = clip.frames[0, :, 12:20].astype(np.float64).mean(axis=(1, 3))  # (T, W): block interiors
    return [sum(1 << b for b in range(6) if row[8 * b + 2:8 * b + 6].mean() > 127) for row in blocks]


@pytest.mark.parametrize("name,fmt,codec,options", [
    ("h264.avi", "avi", "libx264", {"threads": "1"}),
    ("h264.ts", "mpegts", "libx264", {"threads": "1"}),
    ("mpeg2.mpg", "mpeg", "mpeg2video", {"bf": "2"}),
    ("mpeg4.mp4", "mp4", "mpeg4", {"bf": "2"}),
])
def test_auto_decodes_the_documented_frames_where_decord_seeks_wrong(tmp_path: Path, name: str, fmt: str,
                                                                       codec: str, options: dict) -> None:
    """decord returned frames 0-7, 51-59 or 28-35 here instead of 16-23, with no error."""
    clip = decode_video(_indexed(tmp_path / name, fmt, codec, options=options), SamplingPolicy(frames=8))
    assert clip.backend == "pyav" and _ids(clip) == list(range(16, 24))
    np.testing.assert_allclose(clip.timestamps[0], np.arange(16, 24) / FPS, atol=1e-3)


def test_h264_in_mp4_stays_on_decord(tmp_path: Path) -> None:
    clip = decode_video(_indexed(tmp_path / "h.mp4", "mp4", "libx264", options={"threads": "1"}),
                        SamplingPolicy(frames=8))
    assert clip.backend == "decord" and _ids(clip) == list(range(16, 24))


@pytest.mark.parametrize("rotation,size,band", [(90, (48, 64), "left"), (90, (64, 64), "left"),
                                                (180, (48, 64), "bottom")])
def test_rotated_videos_come_out_upright_from_every_backend(tmp_path: Path, rotation: int, size: tuple,
                                                            band: str) -> None:
    """A phone's portrait video: decord turned some, failed on others (then PyAV did not turn them)."""
    path = _indexed(tmp_path / "rot.mp4", "mp4", "libx264", n=12, options={"threads": "1"}, rotation=rotation,
                    size=size)
    for backend in ("auto", "pyav"):
        frame = decode_video(path, SamplingPolicy(frames=4), backend=backend).frames[0, 0].astype(int)
        red = frame[..., 0] - frame[..., 1]
        edges = {"top": red[:3].mean(), "bottom": red[-3:].mean(), "left": red[:, :3].mean(),
                 "right": red[:, -3:].mean()}
        assert max(edges, key=edges.get) == band, (backend, edges)


def test_timestamps_count_from_the_stream_start_in_both_backends(tmp_path: Path) -> None:
    path = _indexed(tmp_path / "offset.mkv", "matroska", "libx264", options={"threads": "1"}, first_pts=100)
    a, b = (decode_video(path, SamplingPolicy(frames=8), backend=k) for k in ("decord", "pyav"))
    np.testing.assert_allclose(a.timestamps, b.timestamps, atol=1e-3)
    np.testing.assert_allclose(b.timestamps[0], np.arange(16, 24) / FPS, atol=1e-3)


@pytest.mark.parametrize("fps", [24, 25, 60])
def test_a_one_frame_mkv_gets_time_zero_not_decords_garbage(tmp_path: Path, fps: int) -> None:
    """decord gave 9.2e15 s for its only frame; with one index there is no order to check, only the duration."""
    from saga.benchmark.videoio import write_video

    path = write_video(tmp_path / "one.mkv", np.full((1, 32, 32, 3), 128, np.uint8), fps)
    clip = decode_video(path, SamplingPolicy(frames=4))
    assert clip.n_frames == 1 and np.all(clip.timestamps == 0.0)
