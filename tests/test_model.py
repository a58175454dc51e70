"""The video transformer: shapes, masking, attention maps, CLS pooling, head reset."""

from __future__ import annotations

import pytest
import torch

from saga.errors import SagaError
from saga.model import ModelConfig, ModelOutput, VideoTransformer, sinusoidal_encoding



SMALL = dict(in_dim=16, d_model=32, depth=2, heads=2, max_frames=16)


def make(pool: str = "mean", n_classes: int = 3, seed: int = 0) -> VideoTransformer:
    torch.manual_seed(seed)
    return VideoTransformer(ModelConfig(pool=pool, n_classes=n_classes, **SMALL)).eval()


def batch(b: int = 4, t: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, 16, generator=g)
    lengths = torch.tensor([t, 5, 3, 1][:b])
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return x, mask


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_shapes(pool: str) -> None:
    m = make(pool)
    x, mask = batch()
    out = m(x, mask, return_attn=True)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (4, 3)
    assert out.embedding.shape == (4, 32)
    assert out.attn is not None and len(out.attn) == 2
    assert all(a.shape == (4, 2, 8, 8) for a in out.attn)  # CLS row/col removed
    assert m(x, mask).attn is None
    assert m(x).logits.shape == (4, 3)  # no mask = all frames real


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_padding_perturbation_changes_nothing(pool: str) -> None:
    m = make(pool)
    x, mask = batch()
    out = m(x, mask)
    x2 = x.clone()
    x2[~mask] = torch.randn(int((~mask).sum()), 16) * 100.0
    out2 = m(x2, mask)
    assert torch.equal(out.logits, out2.logits)
    assert torch.equal(out.embedding, out2.embedding)
    x2[~mask] = float("nan")  # even NaN padding cannot leak
    out3 = m(x2, mask, return_attn=True)
    ref = m(x, mask, return_attn=True)  # compare like with like: the explicit path
    assert torch.equal(ref.logits, out3.logits)
    assert all(torch.equal(a, b) for a, b in zip(ref.attn, out3.attn))
    assert torch.equal(out.logits, m(x2, mask).logits)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_padded_equals_truncated(pool: str) -> None:
    m = make(pool)
    x, mask = batch()
    out = m(x, mask)
    for i, n in enumerate(mask.sum(1).tolist()):
        short = m(x[i : i + 1, :n])
        torch.testing.assert_close(out.embedding[i : i + 1], short.embedding, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.logits[i : i + 1], short.logits, atol=1e-5, rtol=1e-5)


def test_attention_rows_and_padded_keys() -> None:
    m = make("mean")
    x, mask = batch()
    out = m(x, mask, return_attn=True)
    for a in out.attn:
        torch.testing.assert_close(a.sum(-1), torch.ones(4, 2, 8), atol=1e-5, rtol=0)
        keys_padded = (~mask)[:, None, None, :].expand_as(a)
        assert (a[keys_padded] == 0).all()


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_sdpa_equals_explicit(pool: str) -> None:
    m = make(pool)
    x, mask = batch()
    fast = m(x, mask)
    slow = m(x, mask, return_attn=True)
    torch.testing.assert_close(fast.logits, slow.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.embedding, slow.embedding, atol=1e-5, rtol=1e-5)
    # Without a mask too.
    torch.testing.assert_close(m(x).embedding, m(x, return_attn=True).embedding, atol=1e-5, rtol=1e-5)


def test_fully_masked_video_is_finite() -> None:
    for pool in ("mean", "cls"):
        m = make(pool)
        x, mask = batch()
        mask[2] = False
        fast, slow = m(x, mask), m(x, mask, return_attn=True)
        assert torch.isfinite(fast.logits).all() and torch.isfinite(slow.logits).all()
        torch.testing.assert_close(fast.logits, slow.logits, atol=1e-5, rtol=1e-5)
        assert all(torch.isfinite(a).all() for a in slow.attn)
    # Backward through a fully masked row stays finite as well.
    m = make("mean").train()
    out = m(x, mask)
    out.logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_cls_pooling_uses_token() -> None:
    m = make("cls")
    assert m.cls_token is not None and m.cls_token.shape == (1, 1, 32)
    x, mask = batch()
    e1 = m(x, mask).embedding
    with torch.no_grad():
        m.cls_token.add_(1.0)
    assert not torch.allclose(e1, m(x, mask).embedding)


def test_reset_head_keeps_backbone() -> None:
    m = make("mean", n_classes=2)
    x, mask = batch()
    before = m(x, mask).embedding
    m.reset_head(5)
    out = m(x, mask)
    assert out.logits.shape == (4, 5)
    assert m.config.n_classes == 5
    torch.testing.assert_close(out.embedding, before)
    with pytest.raises(SagaError):
        m.reset_head(0)


def test_config_roundtrip_and_validation() -> None:
    c = ModelConfig(pool="cls", **SMALL)
    assert ModelConfig.from_dict(c.to_dict()) == c
    with pytest.raises(SagaError, match="unknown"):
        ModelConfig.from_dict({**c.to_dict(), "depht": 3})
    with pytest.raises(SagaError):
        ModelConfig(pool="max")
    with pytest.raises(SagaError):
        ModelConfig(d_model=30, heads=4)
    # The caller's config object is copied, so reset_head does not mutate it.
    m = VideoTransformer(c)
    m.reset_head(7)
    assert c.n_classes == 2


def test_input_checks() -> None:
    m = make()
    with pytest.raises(SagaError, match="max_frames"):
        m(torch.randn(1, 17, 16))
    with pytest.raises(SagaError, match="in_dim"):
        m(torch.randn(1, 4, 15))
    with pytest.raises(SagaError, match="mask"):
        m(torch.randn(1, 4, 16), torch.ones(1, 5, dtype=torch.bool))


def test_positional_encoding() -> None:
    pe = sinusoidal_encoding(64, 32)
    assert pe.shape == (64, 32)
    torch.testing.assert_close(pe[0, 1::2], torch.ones(16))  # cos(0)
    assert sinusoidal_encoding(4, 7).shape == (4, 7)
    m = make()
    assert "pos" not in m.state_dict()  # a function of the config, not a weight
    # Order matters: reversing the frames changes the embedding.
    x, _ = batch(1)
    assert not torch.allclose(m(x).embedding, m(x.flip(1)).embedding)
