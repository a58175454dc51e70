"""`saga predict`'s class and probabilities: the class is evaluate's, the probabilities calibrated."""

from __future__ import annotations


def test_predict_keeps_evaluates_class_when_calibration_ranks_window_averages_differently() -> None:
    """Three windows: logits (10, 0), (-3, 0), (-3, 0). The mean per-window softmax (evaluate's rule)
    picks class 1; calibration's softmax of the mean logits (1.33, 0) would pick class 0."""
    import torch

    from saga.openworld.calibration import Calibration
    from saga.openworld.extras import OpenWorld
    from saga.predict import decide

    windows = torch.tensor([[10.0, 0.0], [-3.0, 0.0], [-3.0, 0.0]])
    res = {"logits": windows.mean(0, keepdim=True).numpy(), "probs": windows.softmax(-1).mean(0, keepdim=True).numpy()}
    calibration = Calibration(temperature=2.0, split="val", n=10, nll_before=1.0, nll_after=0.9, ece_before=0.1,
                              ece_after=0.05, run_model="x", classes=["a", "b"])
    best, probs = decide(res, OpenWorld(info=None, taxonomy=None, calibration=calibration))  # type: ignore[arg-type]
    assert best == 1 and probs.argmax() == 0  # the class is evaluate's; the probabilities are calibrated
    assert decide(res, OpenWorld(info=None, taxonomy=None))[0] == 1  # type: ignore[arg-type]
