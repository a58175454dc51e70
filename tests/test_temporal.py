"""Content-free temporal input and the training rules for a few labels (budget, selection, head lr)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saga.errors import SagaError
from saga.model import ModelConfig, VideoTransformer
from saga.model.temporal import CENTRE, LOG_EPS, SCALE, neighbour_tokens, token_dim
from saga.train.loop import TrainOptions, _improves, _patience_spent
from saga.train.schedule import make_optimizer

SMALL = dict(in_dim=16, d_model=32, depth=2, heads=2, max_frames=16)


def test_neighbour_tokens_see_held_frames_and_respect_padding() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 16, generator=g)
    x[0, 3] = x[0, 2]  # frame 3 holds frame 2
    mask = torch.tensor([[True] * 6 + [False] * 2])
    tok = neighbour_tokens(x, mask, lags=2)
    assert tok.shape == (1, 8, token_dim(2))
    held = (math.log(LOG_EPS) - CENTRE) / SCALE
    assert tok[0, 3, 0].item() == pytest.approx(held, abs=1e-3)  # distance to t-1 is 0
    assert tok[0, 2, 1].item() == pytest.approx(held, abs=1e-3)  # and to t+1 seen from frame 2
    flags = tok[0, :, 4:]
    assert flags[0, 0] == 0 and flags[0, 1] == 1  # frame 0 has no t-1, has t+1
    assert flags[5, 1] == 0 and flags[4, 3] == 0  # padded frames are no neighbours
    assert torch.all(tok[0, 6:, :4] == 0) and torch.all(flags[6:] == 0)
    x2 = x.clone()
    x2[0, 6:] = 1e6  # what padding holds changes nothing
    assert torch.equal(neighbour_tokens(x2, mask, 2), tok)


def test_temporal_only_model_ignores_content() -> None:
    """A content-free θ gives the same output for features that differ only by a rotation of space."""
    torch.manual_seed(0)
    model = VideoTransformer(ModelConfig(inputs="temporal", **SMALL)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 8, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    a, b = model(x).logits, model(x @ q).logits
    assert torch.allclose(a, b, atol=1e-4)
    both = VideoTransformer(ModelConfig(inputs="both", **SMALL)).eval()
    assert not torch.allclose(both(x).logits, both(x @ q).logits, atol=1e-4)


@pytest.mark.parametrize("inputs,content_dim", [("content", 0), ("temporal", 0), ("both", 0), ("both", 8)])
def test_every_input_kind_trains_and_pads_cleanly(inputs: str, content_dim: int) -> None:
    torch.manual_seed(0)
    model = VideoTransformer(ModelConfig(inputs=inputs, content_dim=content_dim, content_drop=0.3, **SMALL))
    x = torch.randn(4, 8, 16)
    mask = torch.arange(8)[None] < torch.tensor([8, 5, 3, 1])[:, None]
    model(x, mask).logits.sum().backward()
    model.eval()
    x2 = x.clone()
    x2[~mask] = 7.0
    assert torch.equal(model(x, mask).logits, model(x2, mask).logits)
    assert ("in_norm.weight" in model.state_dict()) == (inputs != "temporal")
    assert any(k.startswith("temporal.") for k in model.state_dict()) == (inputs != "content")


def test_content_drop_hides_content_only_in_training() -> None:
    torch.manual_seed(0)
    model = VideoTransformer(ModelConfig(inputs="both", content_drop=0.99, dropout=0.0, **SMALL))
    x = torch.randn(2, 8, 16)
    rot = x @ torch.linalg.qr(torch.randn(16, 16))[0]
    model.train()
    torch.manual_seed(5)
    a = model(x).logits
    torch.manual_seed(5)
    assert torch.allclose(a, model(rot).logits, atol=1e-4)  # content hidden: only time is left
    model.eval()
    assert not torch.allclose(model(x).logits, model(rot).logits, atol=1e-4)


def test_bad_model_inputs_are_one_line_errors() -> None:
    with pytest.raises(SagaError, match="inputs"):
        ModelConfig(inputs="pixels")
    with pytest.raises(SagaError, match="temporal_lags"):
        ModelConfig(inputs="both", temporal_lags=0)
    with pytest.raises(SagaError, match="content_drop"):
        ModelConfig(content_drop=1.0)


def test_step_budget_raises_short_epoch_counts() -> None:
    opts = TrainOptions(epochs=30, min_steps=300)
    assert opts.planned_epochs(2) == 150 and opts.planned_epochs(100) == 30
    assert TrainOptions(epochs=5).planned_epochs(1) == 5
    state = {"bad_epochs": 9, "step": 100}
    assert not _patience_spent(TrainOptions(patience=5, min_steps=300), state)
    assert _patience_spent(TrainOptions(patience=5, min_steps=100), state)
    assert not _patience_spent(TrainOptions(patience=0), state)


def test_selection_breaks_accuracy_ties_by_validation_loss() -> None:
    state = {"best_epoch": 3, "best_metric": 0.5, "best_loss": 1.0}
    assert not _improves("accuracy", {"macro_accuracy": 0.5, "loss": 1.2}, state)
    assert _improves("accuracy", {"macro_accuracy": 0.5, "loss": 0.9}, state)
    assert _improves("accuracy", {"macro_accuracy": 0.55, "loss": 3.0}, state)
    assert not _improves("loss", {"macro_accuracy": 0.9, "loss": 1.1}, state)
    assert _improves("last", {"macro_accuracy": 0.1, "loss": 9.0}, state)
    assert _improves("accuracy", {"macro_accuracy": 0.0, "loss": 9.0}, {**state, "best_epoch": None})
    with pytest.raises(SagaError, match="select"):
        TrainOptions(select="best").check()


def test_head_learns_at_its_own_rate() -> None:
    model = VideoTransformer(ModelConfig(**SMALL))
    opt = make_optimizer(model, 1e-4, 0.05, head_lr_scale=10.0)
    head = {id(p) for p in model.head.parameters()}
    for group in opt.param_groups:
        is_head = {id(p) in head for p in group["params"]}
        assert len(is_head) == 1
        assert group["lr"] == pytest.approx(1e-3 if is_head.pop() else 1e-4)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert np.isclose(sum(p.numel() for g in opt.param_groups for p in g["params"]),
                      sum(p.numel() for p in model.parameters()))
