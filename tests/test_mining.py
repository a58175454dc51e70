"""FAISS hard-negative mining, the triplet / combined losses, and a tiny CE+HNM training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saga.errors import SagaError
from saga.model import ModelConfig, VideoTransformer
from saga.train.losses import combined_loss, triplet_loss
from saga.train import mining_index
from saga.train.mining import ApproxParams, mine_triplets
from saga.train.mining_index import brute_negatives, resolve_search


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """float64 squared-distance matrix."""
    x = x.astype(np.float64)
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def check_hard_against_brute(x: np.ndarray, y: np.ndarray, m, atol: float = 1e-5) -> None:
    d = brute(unit(x), y)
    same = y[:, None] == y[None, :]
    usable = np.array([(y == y[i]).sum() >= 2 for i in range(len(y))])
    np.testing.assert_array_equal(m.anchors, np.flatnonzero(usable))
    for a, p, n, dap, dan in zip(m.anchors, m.positives, m.negatives, m.d_ap, m.d_an):
        assert y[p] == y[a] and p != a and y[n] != y[a]
        assert abs(dan - d[a][~same[a]].min()) < atol  # the true nearest other-class item
        assert abs(dap - np.delete(d[a], a)[np.delete(same[a], a)].max()) < atol  # farthest positive
        assert abs(dan - d[a, n]) < atol and abs(dap - d[a, p]) < atol


def clustered(n_classes: int, per: int, d: int = 8, spread: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, d))
    y = np.repeat(np.arange(n_classes), per)
    x = centres[y] + spread * rng.normal(size=(len(y), d))
    return x.astype(np.float32), y


@pytest.mark.parametrize("k", [1, 5, 64])
def test_hard_negatives_match_brute_force(k: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = rng.integers(0, 25, size=300)
    y[0] = 99  # a singleton class: its anchor is dropped
    m = mine_triplets(x, y, k=k)  # k no longer matters: every class is searched with k = 1
    check_hard_against_brute(x, y, m)
    assert m.search == "exact"


def test_exact_when_nearest_neighbours_are_same_class() -> None:
    """Tight clusters: all 9 same-class items come before any negative; per-class search needs no fallback."""
    x, y = clustered(n_classes=12, per=10)
    m = mine_triplets(x, y, k=4, search="exact")
    assert len(m) == 120
    check_hard_against_brute(x, y, m)


@pytest.mark.parametrize("seed", range(4))
def test_exact_matches_numpy_brute_force_random(seed: int) -> None:
    """Random sizes, dims and class counts (singletons included), unnormalised too."""
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(2, 120)), int(rng.integers(1, 12))
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, int(rng.integers(2, 9)), size=n) * 7 - 3  # arbitrary label values
    for normalize in (True, False):
        m = mine_triplets(x, y, search="exact", normalize=normalize)
        xs = unit(x) if normalize else x
        dd = brute(xs, y)
        same = y[:, None] == y[None, :]
        usable = np.array([(y == y[i]).sum() >= 2 and (y != y[i]).any() for i in range(n)])
        np.testing.assert_array_equal(m.anchors, np.flatnonzero(usable))
        for a, neg, dan in zip(m.anchors, m.negatives, m.d_an):
            true = dd[a][~same[a]].min()
            assert y[neg] != y[a] and abs(dan - true) <= 1e-5 * max(1.0, true)


def test_exact_query_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anchors are searched in blocks on a full-pool refresh; the blocks must not change the answer."""
    x, y = clustered(n_classes=5, per=30, spread=0.7, seed=4)
    whole = mine_triplets(x, y, search="exact")
    monkeypatch.setattr(mining_index, "_QUERY_BLOCK", 7)
    monkeypatch.setattr(mining_index, "_BRUTE_ELEMS", 64)  # also splits the final per-class choice
    np.testing.assert_array_equal(mine_triplets(x, y, search="exact").negatives, whole.negatives)


def test_exact_ties_go_to_the_lowest_index() -> None:
    # Anchor 0 (class 0) at the origin; classes 1 and 2 each hold a point at distance 1 (indices 4, 2).
    x = np.array([[0, 0], [0.1, 0], [0, 1], [0, 1], [1, 0], [-1, 0], [5, 5]], np.float32)
    y = np.array([0, 0, 2, 2, 1, 1, 1])
    m = mine_triplets(x, y, normalize=False, search="exact")
    assert m.negatives[0] == 2  # equidistant 2 (class 2), 3 (class 2), 4 (class 1), 5 (class 1)
    again = mine_triplets(x[::-1].copy(), y[::-1].copy(), normalize=False, search="exact")
    assert again.negatives[np.flatnonzero(again.anchors == 6)[0]] == 1  # reversed: the four are now 1..4


def test_single_class_and_singletons() -> None:
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    for how in ("exact", "approx", "auto"):
        assert len(mine_triplets(x, np.zeros(10, int), search=how)) == 0  # one class: no negative anywhere
        m = mine_triplets(x, np.arange(10), search=how)  # all singletons: no positive anywhere
        assert len(m) == 0
    y = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8])  # one pair, the rest singletons (still negatives)
    m = mine_triplets(x, y, search="exact")
    np.testing.assert_array_equal(m.anchors, [0, 1])
    check_hard_against_brute(x, y, m)


def test_search_option_and_auto_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = clustered(n_classes=4, per=50, spread=0.6, seed=3)
    with pytest.raises(SagaError):
        mine_triplets(x, y, search="hnsw")
    assert resolve_search("auto", mining_index.APPROX_MIN_POOL - 1) == "exact"
    assert resolve_search("auto", mining_index.APPROX_MIN_POOL) == "approx"
    assert resolve_search("exact", 10**9) == "exact"
    assert mine_triplets(x, y).search == "exact"
    monkeypatch.setattr(mining_index, "APPROX_MIN_POOL", 100)
    assert mine_triplets(x, y, approx=ApproxParams(nlist=4, nprobe=4)).search == "approx"  # passes its check
    assert mine_triplets(x, y, mode="semihard").search == "exact"  # semi-hard is always exact
    # No structure (isotropic, 64-d) and one list of 8 probed: the check fails, auto mines exactly.
    xr = np.random.default_rng(7).normal(size=(800, 64)).astype(np.float32)
    yr = np.random.default_rng(8).integers(0, 4, size=800)
    weak = ApproxParams(nlist=8, nprobe=1)
    assert mine_triplets(xr, yr, search="approx", approx=weak).search == "approx"
    auto = mine_triplets(xr, yr, approx=weak)
    assert auto.search == "exact"
    np.testing.assert_array_equal(auto.negatives, mine_triplets(xr, yr, search="exact").negatives)


def test_brute_negatives_pool_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    x = unit(rng.normal(size=(97, 5)))
    y = rng.integers(0, 4, size=97)
    anchors = np.arange(0, 97, 3)
    dd = brute(x, y)
    floor = np.full(anchors.size, 0.5, np.float32)
    want = []
    for a, f in zip(anchors, floor):
        ok = np.flatnonzero((y != y[a]) & (dd[a] > f))
        want.append(ok[dd[a, ok].argmin()] if ok.size else -1)
    for elems in (1 << 24, 7, 1):  # one pool block, many blocks, one pool row per block
        monkeypatch.setattr(mining_index, "_BRUTE_ELEMS", elems)
        np.testing.assert_array_equal(brute_negatives(x, y, anchors, floor), want)
        plain = brute_negatives(x, y, anchors, None)
        for a, j in zip(anchors, plain):
            assert abs(dd[a, j] - dd[a][y != y[a]].min()) < 1e-6


def test_semihard_hand_built() -> None:
    # Points on a line (no normalisation): class 0 at 0.0 (A), 0.5 (B); class 1 at 0.3 (C), 0.6 (D), 1.5 (E).
    x = np.array([[0.0, 0], [0.5, 0], [0.3, 0], [0.6, 0], [1.5, 0]], np.float32)
    y = np.array([0, 0, 1, 1, 1])
    hard = mine_triplets(x, y, normalize=False)
    np.testing.assert_array_equal(hard.negatives, [2, 3, 1, 1, 1])
    np.testing.assert_array_equal(hard.positives, [1, 0, 4, 4, 2])
    for k in (2, 64):  # k=2 exercises the exact semi-hard fallback
        sh = mine_triplets(x, y, mode="semihard", margin=0.2, k=k, normalize=False)
        # A: d_ap 0.25; hardest negative C (0.09) is too hard, D (0.36) is mined instead.
        np.testing.assert_array_equal(sh.anchors, [0])
        np.testing.assert_array_equal(sh.negatives, [3])
        np.testing.assert_allclose(sh.d_ap, [0.25], atol=1e-6)
        np.testing.assert_allclose(sh.d_an, [0.36], atol=1e-6)
        wide = mine_triplets(x, y, mode="semihard", margin=1.0, k=k, normalize=False)
        # B: d_ap 0.25, E at 1.0 < 1.25 survives; E: d_ap 1.44, A at 2.25 < 2.44 survives.
        np.testing.assert_array_equal(wide.anchors, [0, 1, 4])
        np.testing.assert_array_equal(wide.negatives, [3, 4, 0])


def test_semihard_skips_a_negative_tied_with_the_positive_and_takes_the_next() -> None:
    """A negative at exactly d_ap (the same clip under two generators) is not semi-hard; the float32
    expanded distance put it a few ulps above d_ap, so it was chosen, then dropped: the anchor lost its triplet."""
    rng = np.random.default_rng(1)
    lost = tried = 0
    for _ in range(200):
        a = unit(rng.normal(size=(1, 16)))[0]
        p = unit((a + 0.3 * rng.normal(size=16))[None])[0]
        far = unit((a + 0.32 * rng.normal(size=16))[None])[0]
        x = np.stack([a, p, p, far]).astype(np.float32)  # item 2: a negative where the positive is
        d_ap, d_far = (float(((x[0].astype(np.float64) - x[i]) ** 2).sum()) for i in (1, 3))
        if not d_ap < d_far < d_ap + 0.2:
            continue
        tried += 1
        m = mine_triplets(x, np.array([0, 0, 1, 1]), "semihard", 0.2, anchors=np.array([0]))
        lost += m.negatives.tolist() != [3]
    assert tried > 20 and lost == 0


@pytest.mark.parametrize("k", [3, 64])
@pytest.mark.parametrize("positive", ["hardest", "easiest"])
def test_semihard_matches_brute_force(k: int, positive: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = rng.integers(0, 10, size=200)
    margin = 0.3
    m = mine_triplets(x, y, mode="semihard", margin=margin, k=k, positive=positive)
    d = brute(unit(x), y)
    expect = {}
    for a in range(len(y)):
        pos = np.flatnonzero((y == y[a]) & (np.arange(len(y)) != a))
        dap = d[a, pos].max() if positive == "hardest" else d[a, pos].min()
        other = np.flatnonzero((y != y[a]) & (d[a] > dap))
        if other.size:
            n = other[d[a, other].argmin()]
            if d[a, n] < dap + margin:
                expect[a] = n
    assert len(expect) > 10
    assert dict(zip(m.anchors.tolist(), m.negatives.tolist())) == expect
    assert ((m.d_an > m.d_ap) & (m.d_an < m.d_ap + margin)).all()


def test_positive_modes_and_edge_cases() -> None:
    x, y = clustered(n_classes=5, per=6, spread=0.5)
    d = brute(unit(x), y)
    easy = mine_triplets(x, y, positive="easiest")
    for a, p in zip(easy.anchors, easy.positives):
        others = np.flatnonzero((y == y[a]) & (np.arange(len(y)) != a))
        assert abs(d[a, p] - d[a, others].min()) < 1e-5
    rand = mine_triplets(x, y, positive="random", seed=3)
    assert (y[rand.positives] == y[rand.anchors]).all() and (rand.positives != rand.anchors).all()
    # Identical members: the anchor is still never its own positive.
    xd = np.repeat(np.eye(3, dtype=np.float32), 3, axis=0)
    yd = np.repeat(np.arange(3), 3)
    for how in ("hardest", "easiest", "random"):
        md = mine_triplets(xd, yd, positive=how)
        assert len(md) == 9 and (md.positives != md.anchors).all()
    # A subset of anchors (the batch) is mined against the whole pool.
    sub = mine_triplets(x, y, anchors=np.array([7, 3, 3]))
    np.testing.assert_array_equal(sub.anchors, [3, 7])
    full = mine_triplets(x, y)
    np.testing.assert_array_equal(sub.negatives, full.negatives[[3, 7]])
    # One class only: nothing to mine, no error.
    assert len(mine_triplets(x, np.zeros(len(x), int))) == 0
    with pytest.raises(SagaError):
        mine_triplets(x, y, mode="hardest")
    with pytest.raises(SagaError):
        mine_triplets(np.full_like(x, np.nan), y)


def test_approximate_ivf_recall_and_parameters() -> None:
    x, y = clustered(n_classes=6, per=400, d=16, spread=0.8, seed=2)
    exact = mine_triplets(x, y, search="exact")
    full = mine_triplets(x, y, search="approx", approx=ApproxParams(nlist=8, nprobe=8))
    np.testing.assert_array_equal(full.negatives, exact.negatives)  # every list probed: exact
    few = mine_triplets(x, y, search="approx", approx=ApproxParams(nlist=8, nprobe=1))
    assert few.search == "approx" and len(few) == len(y)
    assert (y[few.negatives] != y[few.anchors]).all()
    assert (few.d_an >= exact.d_an - 1e-5).all()  # never closer than the true hardest
    recall = float((few.negatives == exact.negatives).mean())
    assert 0.2 < recall < 1.0
    again = mine_triplets(x, y, search="approx", approx=ApproxParams(nlist=8, nprobe=1))
    np.testing.assert_array_equal(again.negatives, few.negatives)  # seeded: deterministic
    with pytest.raises(SagaError):
        mine_triplets(x, y, search="approx", approx=ApproxParams(nprobe=0))
    assert ApproxParams().lists_for(100_000) == 316 and ApproxParams().lists_for(1000) == 25
    assert ApproxParams(nlist=50).lists_for(100) == 2  # capped at members / 39


def test_triplet_loss_values() -> None:
    a = torch.tensor([[1.0, 0], [3.0, 0], [1.0, 0]])  # row 2 is scaled: normalisation removes it
    p = torch.tensor([[0.0, 1], [0.0, 2], [-1.0, 0]])
    n = torch.tensor([[-1.0, 0], [0.0, -1], [1.0, 0]])
    # d_ap, d_an: (2, 4) -> 0; (2, 2) -> 0.2; (4, 0) -> 4.2
    loss, active = triplet_loss(a, p, n, margin=0.2)
    assert active == 2
    assert loss.item() == pytest.approx((0.0 + 0.2 + 4.2) / 3, abs=1e-6)
    empty = torch.zeros(0, 2, requires_grad=True)
    loss0, active0 = triplet_loss(empty, empty, empty)
    assert loss0.item() == 0.0 and active0 == 0
    loss0.backward()
    assert torch.equal(empty.grad, torch.zeros(0, 2))


def test_combined_loss_weighting() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 4), torch.tensor([0, 2, 3])
    a = torch.tensor([[1.0, 0], [3.0, 0], [1.0, 0]])
    p = torch.tensor([[0.0, 1], [0.0, 2], [-1.0, 0]])
    n = torch.tensor([[-1.0, 0], [0.0, -1], [1.0, 0]])
    ce = F.cross_entropy(logits, targets).item()
    hnm = 4.4 / 3
    for lam in (0.0, 0.3, 0.5, 1.0):
        loss, stats = combined_loss(logits, targets, a, p, n, lam=lam, margin=0.2)
        assert loss.item() == pytest.approx(lam * ce + (1 - lam) * hnm, abs=1e-6)
        assert stats["ce"] == pytest.approx(ce) and stats["hnm"] == pytest.approx(hnm)
        assert stats["active"] == 2 and stats["triplets"] == 3
    e = torch.zeros(0, 2)
    loss, stats = combined_loss(logits, targets, e, e, e, lam=0.5)
    assert loss.item() == pytest.approx(0.5 * ce) and stats["active"] == 0
    with pytest.raises(SagaError):
        combined_loss(logits, targets, a, p, n, lam=1.5)


def test_ce_plus_hnm_training_falls() -> None:
    """4 classes of noisy gaussian-cluster sequences; the loss must fall and the classes separate."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n_cls, per, t, d = 4, 16, 8, 16
    centres = torch.randn(n_cls, d, generator=g) * 0.6
    y = torch.arange(n_cls).repeat_interleave(per)
    x = centres[y][:, None, :] + torch.randn(len(y), t, d, generator=g)
    lengths = torch.randint(3, t + 1, (len(y),), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    model = VideoTransformer(ModelConfig(in_dim=d, d_model=32, depth=2, heads=2, n_classes=n_cls))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses, actives = [], []
    for _ in range(80):
        model.train()
        out = model(x, mask)
        m = mine_triplets(out.embedding.detach().numpy(), y.numpy(), k=16)
        a, p, n = (torch.from_numpy(i) for i in (m.anchors, m.positives, m.negatives))
        loss, stats = combined_loss(out.logits, y, out.embedding[a], out.embedding[p], out.embedding[n])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["loss"])
        actives.append(stats["active"])
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.3 * first, (first, last)
    assert np.mean(actives[-10:]) < np.mean(actives[:10])
    model.eval()
    with torch.no_grad():
        acc = (model(x, mask).logits.argmax(1) == y).float().mean().item()
    assert acc > 0.95


def test_approximate_search_projects_low_rank_pools_only() -> None:
    # 64-d embeddings that live in a 12-d subspace (trained φ has few directions): the approximate
    # index searches 16 dimensions (12 rounded up to 8s); with every list probed its negatives and
    # positives are the exact ones, because candidates are compared in the full space.
    x, y = clustered(n_classes=5, per=300, d=12, spread=0.5, seed=4)
    basis = np.linalg.qr(np.random.default_rng(5).normal(size=(64, 12)))[0]
    wide = np.ascontiguousarray(x @ basis.T, dtype=np.float32)
    params = ApproxParams(nlist=6, nprobe=6)
    index = mining_index.ClassIndexes(unit(wide), y, params)
    assert index.dims == 16
    exact = mine_triplets(wide, y, search="exact")
    approx = mine_triplets(wide, y, search="approx", approx=params)
    np.testing.assert_array_equal(approx.negatives, exact.negatives)
    np.testing.assert_allclose(approx.d_ap, exact.d_ap, rtol=1e-4, atol=1e-5)  # same hardest positive distances
    # Isotropic: no direction to drop, the search stays in the full space; energy=None never projects.
    iso = np.random.default_rng(6).normal(size=(600, 64)).astype(np.float32)
    assert mining_index.ClassIndexes(iso, y[:600], params).dims == 64
    assert mining_index.ClassIndexes(unit(wide), y, ApproxParams(nlist=6, energy=None)).dims == 64
