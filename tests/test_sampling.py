"""SamplingPolicy: which frame indices each mode picks, padding, validation, and why consecutive."""

from __future__ import annotations

import numpy as np
import pytest

from saga.errors import DecodeError, SagaError
from saga.pipeline.sampling import SamplingPolicy


def test_defaults_are_one_centred_window_of_16() -> None:
    p = SamplingPolicy()
    assert (p.frames, p.mode, p.windows) == (16, "consecutive", 1)
    idx, mask = p.indices(100)
    assert idx.shape == mask.shape == (1, 16)
    assert idx.dtype == np.int64 and mask.dtype == bool
    assert idx[0].tolist() == list(range(42, 58))  # start = (100 - 16) // 2
    assert mask.all()


@pytest.mark.parametrize("n", [16, 17, 31, 32, 33, 1000])
def test_consecutive_single_window_is_centred(n: int) -> None:
    idx, _ = SamplingPolicy(frames=16).indices(n)
    start = (n - 16) // 2
    assert idx[0].tolist() == list(range(start, start + 16))


def test_consecutive_windows_spread_over_video() -> None:
    idx, mask = SamplingPolicy(frames=16, windows=4).indices(100)
    assert idx.shape == (4, 16) and mask.all()
    assert np.all(np.diff(idx, axis=1) == 1)  # each window is consecutive
    starts = idx[:, 0]
    assert starts.tolist() == [4, 29, 54, 79]  # centred in the quarters [0,25), [25,50), ...
    for w, s in enumerate(starts):  # each window centre lies in its own segment
        assert 25 * w <= s + 7.5 < 25 * (w + 1)


def test_consecutive_windows_overlap_on_short_video() -> None:
    idx, mask = SamplingPolicy(frames=16, windows=3).indices(20)
    assert mask.all()
    assert idx.min() == 0 and idx.max() == 19
    assert np.all(np.diff(idx, axis=1) == 1)
    assert idx[0, 0] == 0 and idx[-1, -1] == 19  # clipped into the video, overlapping


def test_uniform_single_window_matches_linspace() -> None:
    idx, mask = SamplingPolicy(frames=16, mode="uniform").indices(31)
    assert idx[0].tolist() == list(range(0, 31, 2))
    idx, _ = SamplingPolicy(frames=8, mode="uniform").indices(100)
    assert idx[0, 0] == 0 and idx[0, -1] == 99
    assert np.array_equal(idx[0], np.floor(np.linspace(0, 99, 8) + 0.5).astype(np.int64))
    assert mask.all()


def test_uniform_windows_interleave_and_cover_ends() -> None:
    idx, mask = SamplingPolicy(frames=8, mode="uniform", windows=3).indices(100)
    assert idx.shape == (3, 8) and mask.all()
    assert idx[0, 0] == 0 and idx[-1, -1] == 99
    for row in idx:
        assert np.all(np.diff(row) >= 1)  # no real frame repeated in a window
    assert np.all(idx[0] < idx[1]) and np.all(idx[1] < idx[2])  # shifted by a fraction of the stride
    assert np.all(idx[2, :-1] < idx[0, 1:])  # ... by less than one stride


@pytest.mark.parametrize("mode", ["consecutive", "uniform"])
@pytest.mark.parametrize("windows", [1, 3])
def test_no_repeated_real_frames_when_long_enough(mode: str, windows: int) -> None:
    p = SamplingPolicy(frames=16, mode=mode, windows=windows)
    for n in range(16, 80):
        idx, mask = p.indices(n)
        assert mask.all() and idx.min() >= 0 and idx.max() <= n - 1
        assert all(len(set(row.tolist())) == 16 for row in idx), (n, idx)


@pytest.mark.parametrize("mode", ["consecutive", "uniform"])
def test_short_video_pads_by_repeating_last_frame(mode: str) -> None:
    idx, mask = SamplingPolicy(frames=8, mode=mode, windows=2).indices(5)
    assert idx.shape == (2, 8)
    for row, m in zip(idx, mask):
        assert row.tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
        assert m.tolist() == [True] * 5 + [False] * 3
    assert mask[0].sum() == 5  # mask counts real frames exactly


def test_single_frame_video_and_single_frame_policy() -> None:
    idx, mask = SamplingPolicy(frames=4).indices(1)
    assert idx.tolist() == [[0, 0, 0, 0]] and mask.tolist() == [[True, False, False, False]]
    idx, mask = SamplingPolicy(frames=1).indices(11)
    assert idx.tolist() == [[5]] and mask.tolist() == [[True]]
    idx, _ = SamplingPolicy(frames=1, mode="uniform").indices(11)
    assert idx.tolist() == [[0]]  # round(linspace(0, 10, 1))
    idx, _ = SamplingPolicy(frames=1, mode="uniform", windows=3).indices(11)
    assert idx[:, 0].tolist() == [0, 5, 10]


def test_deterministic() -> None:
    p = SamplingPolicy(frames=16, mode="uniform", windows=3)
    a, b = p.indices(123), p.indices(123)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("kwargs", [
    {"frames": 0}, {"frames": -3}, {"windows": 0}, {"mode": "random"}, {"frames": 2.5},
    {"frames": True}, {"windows": "2"},
])
def test_invalid_policy_raises_one_line_saga_error(kwargs: dict) -> None:
    with pytest.raises(SagaError) as info:
        SamplingPolicy(**kwargs)
    assert "\n" not in str(info.value) and str(info.value).startswith("sampling:")


@pytest.mark.parametrize("n", [0, -1])
def test_no_frames_is_a_decode_error(n: int) -> None:
    with pytest.raises(DecodeError, match="no decodable frame"):
        SamplingPolicy().indices(n)


def test_dict_round_trip_and_validation() -> None:
    p = SamplingPolicy(frames=np.int64(32), mode="uniform", windows=2)
    d = p.to_dict()
    assert d == {"frames": 32, "mode": "uniform", "windows": 2} and type(d["frames"]) is int
    assert SamplingPolicy.from_dict(d) == p
    assert SamplingPolicy.from_dict({}) == SamplingPolicy()
    with pytest.raises(SagaError, match="unknown key"):
        SamplingPolicy.from_dict({"frame": 8})
    with pytest.raises(SagaError):
        SamplingPolicy.from_dict([("frames", 8)])  # type: ignore[arg-type]


def _even_odd_ratio(features: np.ndarray) -> float:
    """Mean neighbour distance at even steps / at odd steps (method.md's alternation ratio)."""
    d = np.linalg.norm(np.diff(features, axis=0), axis=1)
    even, odd = d[0::2].mean(), d[1::2].mean()
    return float(min(even, odd) / max(even, odd))


def test_consecutive_sampling_reveals_frame_pair_duplication_uniform_hides_it() -> None:
    """method.md: duplicated frames show as alternating neighbour distances only when consecutive."""
    rng = np.random.default_rng(0)
    n, T = 31, 16
    unique_features = rng.normal(size=(n, 8))
    fake = unique_features[np.arange(n) // 2]  # generator duplicated every frame: pairs
    real = unique_features  # no duplication

    cidx, _ = SamplingPolicy(frames=T).indices(n)
    d = np.linalg.norm(np.diff(fake[cidx[0]], axis=0), axis=1)
    zero = d < 1e-12
    assert zero[0::2].all() != zero[1::2].all()  # zero every other step ...
    assert zero[0::2].any() != zero[1::2].any()  # ... and never on the other parity
    assert _even_odd_ratio(fake[cidx[0]]) < 0.1
    assert _even_odd_ratio(real[cidx[0]]) > 0.5

    uidx, _ = SamplingPolicy(frames=T, mode="uniform").indices(n)
    assert np.all(np.diff(uidx[0]) == 2)  # stride 2 lands on one frame of every pair
    du = np.linalg.norm(np.diff(fake[uidx[0]], axis=0), axis=1)
    assert np.all(du > 1e-6)  # duplication invisible: no zero step at all
    assert _even_odd_ratio(fake[uidx[0]]) > 0.5  # looks like a real video


def test_frames_times_windows_is_bounded_so_a_hostile_provenance_cannot_exhaust_memory() -> None:
    """windows = 1e9 in a run's provenance.json made predict allocate 7.45 GiB per video."""
    assert SamplingPolicy(frames=64, windows=16).windows == 16  # 1,024 frames: allowed
    with pytest.raises(SagaError, match=r"frames x windows must be <= 1024 .* 16 x 1000000000"):
        SamplingPolicy.from_dict({"frames": 16, "windows": 10**9})
