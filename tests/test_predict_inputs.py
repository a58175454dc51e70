"""`saga predict`'s inputs and options, checked before any model is loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from saga.cli import app
from saga.errors import SagaError
from saga.predict import Prediction, expand_inputs

from conftest import run_saga


def test_a_named_folder_is_expanded_whatever_its_name(tmp_path: Path) -> None:
    """`predict RUN clips.mp4/` said "is a directory, not a video file" instead of predicting the videos inside."""
    folder = tmp_path / "clips.mp4"
    (folder / "nested.avi").mkdir(parents=True)  # walked into, never taken as a video itself
    for rel in ("b.mp4", "nested.avi/a.mp4", "notes.txt"):
        (folder / rel).write_bytes(b"")
    single = tmp_path / "one.mp4"
    single.write_bytes(b"")
    assert expand_inputs([folder, single]).paths == [folder / "b.mp4", folder / "nested.avi" / "a.mp4", single]


def test_out_without_tsig_is_refused(tmp_path: Path) -> None:
    """--out only holds --tsig plots: without --tsig it was ignored silently, even an impossible one."""
    (tmp_path / "a.mp4").write_bytes(b"")
    proc = run_saga("predict", str(tmp_path / "run"), str(tmp_path / "a.mp4"), "--out", "/no/such/parent/x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--out /no/such/parent/x: only holds the --tsig plots; add --tsig" in " ".join(proc.stderr.split())


def test_linked_sub_folders_are_followed_once_like_extract(tmp_path: Path) -> None:
    """`Path.rglob` did not enter linked sub-folders: videos reachable only through a link were dropped without a
    word (exit 0). Now the folder is walked as `saga extract` walks (`saga.pipeline.walk`): a linked sub-folder is
    followed, a link loop is not, and a real file reached twice (a link to a folder already walked, a hard link)
    is predicted once, each with a note."""
    evidence = tmp_path / "evidence"
    (evidence / "svd").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4"):
        (evidence / "svd" / name).write_bytes(b"x")
    case = tmp_path / "case"
    case.mkdir()
    (case / "own.mp4").write_bytes(b"x")
    (case / "svd_link").symlink_to(evidence / "svd")  # the only way to the two videos
    (case / "loop").symlink_to(case)  # a link back to the folder itself
    (case / "zz_again").symlink_to(evidence / "svd")  # the same folder a second time
    os.link(case / "own.mp4", case / "own_hardlink.mp4")
    found = expand_inputs([case])
    assert found.paths == [case / "own.mp4", case / "svd_link" / "a.mp4", case / "svd_link" / "b.mp4"]
    assert found.unreadable == []
    notes = " | ".join(found.notes)
    assert f"{case / 'loop'}: linked folder not followed (a link loop" in notes
    assert f"{case / 'zz_again'}: linked folder not followed (already listed under svd_link)" in notes
    assert "1 video(s) are the same file as another one (e.g. own_hardlink.mp4 is own.mp4" in notes


def test_an_unreadable_sub_folder_is_a_failed_record_not_a_silent_gap(tmp_path: Path, fake_predictor: None,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """rglob skipped a folder it could not list without a word; it is now a failed record (exit 1), and a call
    whose only videos are in such folders names it instead of a bare "no videos found"."""
    import saga.pipeline.walk as walk

    (tmp_path / "ok.mp4").write_bytes(b"x")
    (tmp_path / "locked").mkdir()
    real_walk = os.walk

    def walk_denied(top: Any, onerror: Any = None, followlinks: bool = False) -> Any:
        for dirpath, dirnames, filenames in real_walk(top, onerror=onerror, followlinks=followlinks):
            if Path(dirpath).name == "locked":  # as os.walk reports a folder it cannot list (runs as root too)
                onerror(PermissionError(13, "Permission denied", dirpath))
                continue
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(walk.os, "walk", walk_denied)
    found = expand_inputs([tmp_path])
    assert found.paths == [tmp_path / "ok.mp4"] and found.unreadable == [(str(tmp_path / "locked"), "Permission denied")]
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert f"{tmp_path / 'locked'}: cannot list this folder (Permission denied); its videos are not predicted" in \
        " ".join(result.output.split())
    (tmp_path / "ok.mp4").unlink()
    with pytest.raises(SagaError, match=r"no videos found .*locked: cannot list this folder \(Permission denied\)"):
        CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path)], catch_exceptions=False)


class FakePredictor:
    """Predictor's interface without a model: videos named bad*.mp4 fail, stop*.mp4 is interrupted (Ctrl-C)."""

    def __init__(self, run: Path, **_: Any) -> None:
        self.identity = {"run": str(Path(run).absolute()), "run_model": "0123456789abcdef" * 2, "run_finished": True}

    def failed(self, path: Path | str, reason: str) -> Prediction:
        return Prediction(str(path), status="failed", error=reason, **self.identity)

    def predict(self, path: Path, tsig: bool = False) -> Prediction:
        if path.name.startswith("stop"):
            raise KeyboardInterrupt
        if path.name.startswith("bad"):
            return self.failed(path, "not a video or truncated")
        return Prediction(str(path), level="GEN-L", predicted="syn-svd", confidence=0.8,
                          probabilities={"syn-svd": 0.8, "real": 0.2}, evidence={"frames": 8, "of": 8, "size": [256, 256],
                                                                                  "still": False},
                          warnings=[], **self.identity)


@pytest.fixture
def fake_predictor(monkeypatch: pytest.MonkeyPatch) -> None:
    import saga.predict

    monkeypatch.setattr(saga.predict, "Predictor", FakePredictor)


def test_text_mode_ends_with_a_summary_naming_the_failures(tmp_path: Path, fake_predictor: None) -> None:
    """Failures went to stderr only, with no closing line: `saga predict RUN DIR > results.txt` left a file that
    silently lacked them (exit 1 the only trace). The last stdout line now counts them and says where they are."""
    for name in ("a.mp4", "b.mp4", "bad1.mp4"):
        (tmp_path / name).write_bytes(b"x")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path)])
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1] == (f"summary: 2 attributed, 1 failed (their reasons are on stderr); "
                                              f"run {tmp_path / 'run'}, weights blake2b 0123456789abcdef")
    assert f"{tmp_path / 'bad1.mp4'}: not a video or truncated" in result.stderr
    json_mode = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path), "--format", "json"])
    assert [json.loads(x)["status"] for x in json_mode.stdout.splitlines()] == ["ok", "ok", "failed"]  # no summary


def test_a_newline_in_a_video_name_keeps_one_line_per_video(tmp_path: Path, fake_predictor: None) -> None:
    """`bad/new<LF>line.mp4` split its text line in two (grep and cut mis-parsed it); shown escaped now."""
    video = tmp_path / "new\nline.mp4"
    video.write_bytes(b"x")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(video)])
    assert result.exit_code == 0
    first = result.stdout.splitlines()[0]
    assert first.startswith(repr(str(video)) + ": GEN-L syn-svd (80.0%)") and "from 8 of 8 frames, 256x256 px" in first
    record = json.loads(CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(video), "--format",
                                                 "json"]).stdout)
    assert record["path"] == str(video)  # JSON keeps the name as it is (escaped by JSON itself)


def test_an_interrupted_predict_says_what_was_printed_not_resume(tmp_path: Path, fake_predictor: None,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C said "committed work is kept; rerun the same command to resume": predict keeps nothing to resume."""
    from saga import cli
    from saga.commands.common import OutputFormat
    from saga.commands.predict_cmds import predict

    for name in ("a.mp4", "b.mp4", "stop.mp4", "z.mp4"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(KeyboardInterrupt) as caught:
        predict(tmp_path / "run", [tmp_path], tsig=False, out=None, encoder=None, pretrained=None, device="cpu",
                format=OutputFormat.json, allow_unfinished=False)
    assert len(capsys.readouterr().out.splitlines()) == 2  # the two records before the interrupt, complete
    with pytest.raises(SystemExit) as code:
        try:  # as typer hands it to the CLI: Exit(130) from the interrupt
            raise SystemExit(130) from caught.value
        except SystemExit as exc:
            cli._interrupted(exc)
    assert code.value.code == 130
    assert capsys.readouterr().err.strip() == (
        "interrupted: 2 of 4 videos predicted (their records above are complete); predict keeps nothing to resume: "
        "rerun it on the videos not yet predicted")


def test_device_defaults_to_auto_like_the_other_commands_that_run_the_encoder() -> None:
    """predict ran the frame encoder on the CPU by default while extract and robustness, the other commands that
    run it, used a GPU when there is one (the help texts all said "auto | cpu | cuda[:N]")."""
    import inspect

    from saga.commands.phase1 import extract
    from saga.commands.predict_cmds import predict
    from saga.commands.robustness_cmds import robustness
    from saga.predict import Predictor

    defaults = {f.__name__: inspect.signature(f).parameters["device"].default for f in (extract, predict, robustness)}
    assert defaults == {"extract": "auto", "predict": "auto", "robustness": "auto"}
    assert inspect.signature(Predictor).parameters["device"].default == "auto"
