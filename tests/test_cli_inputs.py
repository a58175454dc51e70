"""Bad input to the explain, open-world and demo commands: one line naming the file or flag, checked
before the work, and outputs that never overwrite each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from saga.cli import app
from saga.errors import SagaError


def _run_folder(path: Path) -> Path:
    """The least a report shows as a run: its config (nothing evaluated yet)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"stage": 2, "level": "SD-L", "classes": ["real", "sd-1.5"]}))
    return path


def test_report_takes_runs_once_finds_an_ablation_folder_and_refuses_other_folders(tmp_path: Path) -> None:
    from saga.explain.report import build_report

    runs = tmp_path / "runs"
    run = _run_folder(runs / "sd-l")
    (runs / "ablation").mkdir()
    (runs / "ablation" / "ablation.md").write_text("| setting | accuracy |\n|---|---|\n| 2-stage | 91.0 |\n")
    page = build_report([run, runs / "ablation", runs / "sd-l"], tmp_path / "r.html").read_text()  # `runs/*`
    assert page.count('<section id="run-') == 1 and '<section id="ablation">' in page and "91.0" in page
    (tmp_path / "videos").mkdir()
    with pytest.raises(SagaError, match=r"videos: not a saga run folder \(no config.json\); pass folders written"):
        build_report([run, tmp_path / "videos"], tmp_path / "r.html")


@pytest.mark.parametrize("name,data,match", [
    ("bad.json", b"garbage{", r"bad.json: unreadable ablation table \(Expecting value"),
    ("bin.md", b"\x89PNG\r\n\x1a\n\x00", r"bin.md: unreadable ablation table \('utf-8' codec"),
    ("table.csv", b"a,b\n", r"table.csv: not an ablation table; pass the ablation.json or ablation.md"),
])
def test_report_refuses_an_unreadable_ablation_file(tmp_path: Path, name: str, data: bytes, match: str) -> None:
    from saga.explain.report import build_report

    (tmp_path / name).write_bytes(data)
    with pytest.raises(SagaError, match=match):
        build_report([_run_folder(tmp_path / "run")], tmp_path / "r.html", ablation=tmp_path / name)


def test_damaged_tsigs_are_one_line(tmp_path: Path) -> None:
    from saga.explain.tsig import load_tsigs

    (tmp_path / "tsig.npz").write_bytes(b"PK\x03\x04 half a zip file")
    with pytest.raises(SagaError, match=r"tsig.npz: damaged T-Sigs \(BadZipFile\); compute them again"):
        load_tsigs(tmp_path)


def test_a_damaged_demo_stamp_is_one_line(tmp_path: Path) -> None:
    from saga.demo import DemoConfig, _synth

    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "demo.json").write_text('{"per_class": 12, "re')  # a write cut short
    with pytest.raises(SagaError, match=rf"demo.json: corrupt JSON .*; delete {tmp_path} or pick another --out"):
        _synth(DemoConfig(out=tmp_path), print)


def test_open_set_and_enrollment_values_are_checked(tmp_path: Path) -> None:
    from saga.openworld.api import select_videos
    from saga.openworld.openset import fit_openset
    from test_train import build_cache

    with pytest.raises(SagaError, match=r"--k must be >= 1 \(neighbours of the knn score\), got 0"):
        fit_openset(np.zeros((2, 4)), np.zeros((6, 4)), np.zeros((3, 4)), np.zeros(3, int), "m", ["a", "b"], k=0)
    cache = build_cache(tmp_path / "c", real=6, per_gen=1)
    with pytest.raises(SagaError, match=r"--split must be one of train, val, test, got 'bogus'"):
        select_videos(cache, "real", None, "bogus", None, 0)
    with pytest.raises(SagaError, match=r"--limit must be >= 1, got 0"):
        select_videos(cache, "real", None, None, 0, 0)
    assert len(select_videos(cache, "real", None, None, 2, 0)) == 2


@pytest.mark.parametrize("args,flag", [
    (["tsig", "run", "--split", "bogus"], "--split"),
    (["openset", "fit", "run", "--k", "0"], "--k"),
    (["enroll", "run", "--generator", "g", "--limit", "0"], "--limit"),
    (["demo", "--per-class", "-2"], "--per-class"),
])
def test_bad_flag_values_are_usage_errors_naming_the_flag(args: list[str], flag: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and flag in result.output, result.output


def test_logo_checks_retrain_before_training_any_fold(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["openset", "logo", "--cache", str(tmp_path / "no-cache"), "--out",
                                      str(tmp_path / "o"), "--retrain", "2"])
    assert isinstance(result.exception, SagaError) and "--retrain 2: enrollment takes 3-20 videos" in str(
        result.exception)


def test_predict_plots_of_videos_with_the_same_name_do_not_overwrite_each_other(tmp_path: Path) -> None:
    from saga.commands.predict_cmds import _unique

    taken: set[Path] = set()
    names = [_unique(tmp_path, f"{stem}_tsig", ".png", taken).name for stem in ("clip", "clip", "other", "clip")]
    assert names == ["clip_tsig.png", "clip_tsig-2.png", "other_tsig.png", "clip_tsig-3.png"]


def test_an_out_that_is_a_file_or_lies_under_one_is_one_line(tmp_path: Path) -> None:
    """synth, robustness, openset logo, ablate and demo used to end in a NotADirectoryError traceback."""
    from conftest import run_saga

    blocker = tmp_path / "afile"
    blocker.write_text("")
    for args in (["synth", "--out", str(blocker / "sub"), "--per-class", "1"], ["demo", "--out", str(blocker)]):
        proc = run_saga(*args)
        assert proc.returncode == 2 and proc.stderr.strip() == (
            f"error: {blocker}: exists and is not a folder; choose another output folder"), proc.stderr
        assert "generating" not in proc.stdout  # refused before any work


def test_make_dir_names_the_file_in_the_way(tmp_path: Path) -> None:
    from saga.fileio import make_dir

    (tmp_path / "afile").write_text("")
    with pytest.raises(SagaError, match=r"afile: exists and is not a folder"):
        make_dir(tmp_path / "afile" / "logo" / "syn-sora")


@pytest.mark.parametrize("device", ["mps", "meta", "xpu"])
def test_devices_other_than_cpu_and_cuda_are_refused(device: str) -> None:
    from saga.distributed import resolve_device

    with pytest.raises(SagaError, match=f"--device {device}: not supported; use auto, cpu, cuda or cuda:N"):
        resolve_device(device)


@pytest.mark.parametrize("flag", [["--level", "TEAM-L"], ["--level", "GEN-L"], ["--from", "runs/stage1"]])
def test_stage2_flags_without_stage_2_are_refused(tmp_path: Path, flag: list[str]) -> None:
    """`saga train --level TEAM-L --from runs/stage1` (a forgotten --stage 2) trained a stage-1 run."""
    result = CliRunner().invoke(app, ["train", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "r"), *flag])
    assert isinstance(result.exception, SagaError) and "applies to --stage 2 only" in str(result.exception)
    assert not (tmp_path / "r").exists()


def test_the_published_model_is_a_built_in_config_for_each_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    """method.md's θ (frame features only) and stage 2 (CE + HNM on the classes, the trained head)."""
    from saga.commands.common import training_options
    from saga.train.attribute import AttributeConfig
    from saga.train.stage1 import Stage1Config

    stage1 = training_options(Stage1Config, Path("paper-stage1"), epochs=3)
    assert (stage1.inputs, stage1.content_basis, stage1.video_stats, stage1.epochs) == ("content", 0, 0, 3)
    stage2 = training_options(AttributeConfig, Path("paper-stage2"))
    assert (stage2.readout, stage2.self_training, stage2.sources, stage2.content_basis) == ("head", False, False, 0)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paper-stage1").write_text("epochs = 7\n")  # a file of that name wins
    own = training_options(Stage1Config, Path("paper-stage1"))
    assert (own.epochs, own.content_basis) == (7, Stage1Config().content_basis)


def test_an_error_quoting_someone_elses_file_is_one_bounded_line(tmp_path: Path) -> None:
    """A 50,000-character TOML value and a zarr.json attribute holding a newline and a terminal escape were
    printed as they were: a 50 KB error, or two lines the second of which cleared the screen."""
    from conftest import run_saga
    from test_reliability_cache import make_cache

    config = tmp_path / "c.toml"
    config.write_text(f'epochs = "{"y" * 50_000}"\n')
    proc = run_saga("train", "--config", str(config), "--cache", str(tmp_path / "none"), "--out", str(tmp_path / "r"))
    line = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in line and len(line) <= 2100
    assert line.startswith(f"error: {config}: training option epochs must be a whole number, got 'yyy")
    root = make_cache(tmp_path, parts=1).root
    meta = json.loads((root / "zarr.json").read_text())
    meta["attributes"]["saga"]["schema_version"] = "9\n\x1b[2Jall clear " + "z" * 50_000
    (root / "zarr.json").write_text(json.dumps(meta))
    proc = run_saga("cache", "info", str(root))
    line = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in line and "\x1b" not in line and len(line) <= 300
    assert line.startswith(f"error: {root}: cache schema '9\\n\\x1b[2Jall clear zzz") and line.endswith("re-extract it")


def test_one_helper_caps_the_reasons_quoted_from_exceptions() -> None:
    """encoder_files, runs.files and distributed each cut exception text their own way, and the report kept its
    line breaks; `saga.errors.reason` (over `clipped`) is the one rule: one line, bounded, the first detail kept."""
    from saga.errors import REASON_LIMIT, reason
    from saga.explain.report_html import guarded

    exc = RuntimeError('Error(s) in loading state_dict for M:\n\tMissing key(s) in state_dict: "w".\n' + "x" * 5000)
    text = reason(exc)
    assert "\n" not in text and len(text) <= REASON_LIMIT and text.startswith('Missing key(s) in state_dict: "w"')
    assert reason(ValueError()) == "ValueError" and reason(ValueError("a\n\n  b")) == "a; b"

    def damaged() -> str:
        raise ValueError("first\nsecond <" + "x" * 5000)

    shown = guarded("metrics", "rerun", damaged)
    assert "\n" not in shown and len(shown) < 400 and "first second" in shown and "&lt;" in shown
