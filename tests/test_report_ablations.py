"""`saga report` with `saga ablate` tables: one section per ablation folder, each rendered as `saga ablate`
writes its table (± interval, hardest classes, the level/seeds/fraction note), never as raw JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from saga.ablate import to_markdown
from saga.errors import SagaError
from saga.explain.report import build_report


def _run_folder(path: Path) -> Path:
    """The least a report shows as a run: its config (nothing evaluated yet)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"stage": 2, "level": "GEN-L", "classes": ["real", "syn-svd"]}))
    return path


def _ablation(folder: Path, level: str, accuracy: float, markdown: bool = True) -> Path:
    """What `saga ablate` writes: ablation.json and (unless told not to) ablation.md, one row."""
    row = {"setting": "2-stage", "loss": "ce+hnm", "accuracy_mean": accuracy, "accuracy_ci95": 1.5,
           "accuracy_std": 0.5, "macro_mean": 40.0, "macro_ci95": 2.5, "macro_std": 0.5, "runs": 2,
           "per_class": {"syn-svd": 33.3}, "paper": None, "n_test": 8, "class_counts": {"syn-svd": 8}}
    summary = {"level": level, "seeds": [0, 1], "fraction": 0.1, "floor": 2, "per_generator": 0, "rows": [row],
               "test_videos_per_class": {"syn-svd": 8}}
    folder.mkdir(parents=True)
    (folder / "ablation.json").write_text(json.dumps(summary))
    if markdown:
        (folder / "ablation.md").write_text(to_markdown(summary))
    return folder


def _sections(page: str) -> list[str]:
    return re.findall(r'<section id="ablation[^"]*">.*?</section>', page, re.S)


def test_every_ablation_folder_gets_its_own_section(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run = _run_folder(runs / "gen")
    gen, team = _ablation(runs / "ablation-GEN-L", "GEN-L", 50.0), _ablation(runs / "ablation-TEAM-L", "TEAM-L", 77.7)
    page = build_report([gen, team, run], tmp_path / "r.html").read_text()  # `saga report runs/*`
    sections = _sections(page)
    assert len(sections) == 2  # the second table used to be dropped without a word
    assert "<h2>Ablation GEN-L (ablation-GEN-L)</h2>" in sections[0] and "50.0 ± 1.5" in sections[0]
    assert "<h2>Ablation TEAM-L (ablation-TEAM-L)</h2>" in sections[1] and "77.7 ± 1.5" in sections[1]
    assert '<a href="#ablation">ablation: ablation-GEN-L</a>' in page
    assert '<a href="#ablation-2">ablation: ablation-TEAM-L</a>' in page


def test_an_ablation_json_is_rendered_as_saga_ablate_writes_it(tmp_path: Path) -> None:
    table = _ablation(tmp_path / "ablation", "SD-L", 61.2, markdown=False) / "ablation.json"
    page = build_report([_run_folder(tmp_path / "run")], tmp_path / "r.html", ablation=table).read_text()
    [section] = _sections(page)
    assert "<h2>Ablation SD-L (ablation)</h2>" in section
    assert "61.2 ± 1.5" in section and "40.0 ± 2.5" in section  # the interval beside its mean, not a bare column
    assert "SD-L ablation, 2 seeds, labelled fraction 0.1 (floor 2)" in section
    assert "<th>syn-svd</th>" in section and "<td>33.3</td>" in section
    assert "accuracy_ci95" not in section and "{&#x27;syn-svd&#x27;" not in section


def test_a_table_named_and_found_in_its_folder_is_shown_once(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    folder = _ablation(runs / "ablation-GEN-L", "GEN-L", 50.0)
    page = build_report([_run_folder(runs / "gen"), folder], tmp_path / "r.html",
                        ablation=folder / "ablation.md").read_text()
    assert len(_sections(page)) == 1


def test_a_damaged_table_beside_a_run_is_one_line_not_null_or_a_traceback(tmp_path: Path) -> None:
    """`saga report runs/abl/2-stage_ce+hnm_seed0` shows the grid's table found beside the run: a corrupt
    ablation.json there was shown as `null`, and one that is not UTF-8 raised UnicodeDecodeError. A table named
    with --ablation or found in a folder among the runs was already checked; this one was not."""
    folder = _ablation(tmp_path / "abl", "GEN-L", 50.0)
    run = _run_folder(folder / "2-stage_ce+hnm_seed0")
    for damaged in (b"{", b"\xff\xfe not utf-8"):
        (folder / "ablation.json").write_bytes(damaged)
        with pytest.raises(SagaError, match=r"abl/ablation.json: unreadable ablation table \(.*\); rerun `saga ablate`"):
            build_report([run], tmp_path / "r.html")
        assert not (tmp_path / "r.html").exists()


def test_an_ablation_option_naming_a_folder_or_nothing_says_what_to_pass(tmp_path: Path) -> None:
    """`saga report RUN --ablation runs/ablation` (the grid's folder) said "ablation file not found", with no fix."""
    folder = _ablation(tmp_path / "abl", "GEN-L", 50.0)
    run = _run_folder(tmp_path / "run")
    with pytest.raises(SagaError, match=rf"^{re.escape(str(folder))}: is a folder; pass --ablation "
                                        rf"{re.escape(str(folder / 'ablation.json'))}, or the folder itself among"):
        build_report([run], tmp_path / "r.html", ablation=folder)
    with pytest.raises(SagaError, match=r"nope.json: ablation file not found; pass the ablation.json or ablation.md"):
        build_report([run], tmp_path / "r.html", ablation=tmp_path / "nope.json")
