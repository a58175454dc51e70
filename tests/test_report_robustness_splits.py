"""`saga report` shows the robustness-<split>.json that `saga robustness --split val|train` writes into a run folder
(it showed only robustness.json, the test split, and the held-out caches' files), marked and flagged when the split
chose the checkpoint (val) or trained the run (train), as every other figure on those splits is."""

from __future__ import annotations

import json
from pathlib import Path

from saga.explain.report import build_report
from test_report_openworld import ROBUSTNESS_DATA, _run

CHOSEN = {"selected_on": "val", "select": "accuracy", "best_epoch": 1}


def _page(run: Path, tmp_path: Path) -> str:
    return build_report([run], tmp_path / "report.html").read_text()


def _section(page: str, title: str) -> str:
    start = page.index(title)
    return page[start:page.index("</table>", start)]


def _write(run: Path, name: str, **changes: object) -> None:
    (run / name).write_text(json.dumps({**json.loads(json.dumps(ROBUSTNESS_DATA)), **changes}))


def test_a_val_robustness_file_is_shown_with_intervals_and_flagged_optimistic(tmp_path: Path) -> None:
    run = _run(tmp_path / "runs" / "gen", beyond=True)
    _write(run, "robustness-val.json", split="val", n_videos=30, checkpoint_chosen_on_split=CHOSEN)
    sec = _section(_page(run, tmp_path), "<h3>Robustness, val (chose the checkpoint: optimistic) split</h3>")
    assert ("robustness-val.json: the checkpoint was chosen on val: these accuracies are optimistic; the test split "
            "(robustness.json") in sec
    assert "51.16 <span class=ci>[36.0–66.0]</span>" in sec and "n 43" in sec and "43 (1 failed)" in sec
    assert "Accuracy % on the val (chose the checkpoint: optimistic) split (30 videos)" in sec


def test_older_split_files_without_flags_are_marked_from_the_split_and_done_json(tmp_path: Path) -> None:
    run = _run(tmp_path / "runs" / "gen", beyond=True)
    (run / "done.json").write_text(json.dumps({"metric": "val_macro_accuracy", "select": "accuracy",
                                               "best_epoch": 1}))
    _write(run, "robustness-val.json", split="val")
    _write(run, "robustness-train.json", split="train")
    page = _page(run, tmp_path)
    train = _section(page, "<h3>Robustness, train (trained on: fit, not generalisation) split</h3>")
    assert "these accuracies measure fit, not generalisation" in train and "n 43" in train
    assert "these accuracies are optimistic" in _section(page, "<h3>Robustness, val (chose the checkpoint")
    own = _section(page, "<h3>Robustness</h3>")  # robustness.json, the test split: unmarked, no flag line
    assert "Accuracy % on the test split" in own and "optimistic" not in own


def test_a_split_that_chose_nothing_is_shown_unflagged_and_held_out_files_stay_apart(tmp_path: Path) -> None:
    run = _run(tmp_path / "runs" / "gen", beyond=True)  # no done.json: val chose nothing
    _write(run, "robustness-val.json", split="val")
    _write(run, "robustness-val@other-12345678.json", split="val", heldout="other-12345678", cache="other")
    page = _page(run, tmp_path)
    sec = _section(page, "<h3>Robustness, val split</h3>")
    assert "optimistic" not in sec and "n 43" in sec
    assert page.count("<h3>Robustness, val") == 1 and "<h3>Robustness on held-out cache other" in page
