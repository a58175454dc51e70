"""Training options as units (no training): enums parsed once, the loss mix, the labelled-count line
(split from test_train.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from saga.cache.fraction import read_labelled, settings
from saga.errors import SagaError
from saga.train.losses import combined_loss, weigh
from saga.train.options import Loss, Select
from test_train import a_config


def test_string_options_are_parsed_once_into_their_enums() -> None:
    cfg = a_config(loss="ce+semihnm", select="loss", mine_every="7")
    cfg.check()
    assert cfg.loss is Loss.CE_SEMIHNM and cfg.loss.mining == "semihard" and cfg.select is Select.LOSS
    assert cfg.mine_every == 7 and cfg.mine_steps() == 7
    assert json.loads(json.dumps(cfg.to_dict()))["loss"] == "ce+semihnm"  # config.json keeps the plain string
    for bad, message in ((dict(loss="hnm"), "loss must be one of ce, ce+semihnm, ce+hnm"),
                         (dict(select="best"), "select must be one of accuracy, loss, last"),
                         (dict(mine_every="0"), "mine_every must be 'epoch' or a number of steps >= 1")):
        with pytest.raises(SagaError, match=re.escape(message)):
            a_config(**bad).check()


def test_weigh_is_the_one_mix_of_the_two_terms() -> None:
    assert weigh(0.25, 4.0, 8.0) == pytest.approx(7.0)
    logits, y = torch.zeros(2, 3), torch.tensor([0, 1])
    emb = torch.eye(2, 4)
    loss, stats = combined_loss(logits, y, emb, emb, emb.flip(0), lam=0.25, margin=0.2)
    assert float(loss) == pytest.approx(weigh(0.25, stats["ce"], stats["hnm"]))


def test_counts_line_names_the_fewest_and_most_labelled_classes() -> None:
    """GenVideo at 0.5 %: 2 labels for six GEN-L classes, 4,282 for real (QA realdata 2)."""
    from saga.cache.fraction import counts_line

    counts = {"real": 4282, "ZeroScope": 466, "ModelScope": 2, "MorphStudio": 2, "MoonValley": 2, "HotShot": 2,
              "Show-1": 2, "Gen2": 5, "Sora": 2}
    subset = {c: [f"{c}/{i}.mp4" for i in range(n)] for c, n in counts.items()}
    assert counts_line("GEN-L", subset) == ("labelled per GEN-L class: min 2 (ModelScope, MorphStudio, MoonValley "
                                            "and 3 more) … max 4282 (real); 4765 videos in 9 classes")
    assert counts_line("TEAM-L", {"a": ["x"], "b": ["y"]}) == "labelled per TEAM-L class: 1 each; 2 videos in 2 classes"


def test_a_corrupt_labelled_json_names_the_fix(tmp_path: Path) -> None:
    """A damaged labelled.json in a grid cell stopped `saga ablate` with "corrupt JSON (...)" and no fix."""
    path = tmp_path / "labelled.json"
    for damaged in (b"x", b"\xff", b"[1, 2]"):
        path.write_bytes(damaged)
        with pytest.raises(SagaError, match=r"labelled.json: corrupt .*; restore it, or delete the run folder and "
                                            r"train again \(the same settings draw the same subset\)$"):
            read_labelled(path, settings("GEN-L", 0.5, 1, 0, "c"), [], None)  # type: ignore[arg-type] - unread
