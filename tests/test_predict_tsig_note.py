"""`saga predict RUN VIDEOS --tsig` on a run without class T-Sigs says so once, before the first video.

It said "RUN: no class T-Sigs yet; run `saga tsig ...`" after every video, and drew no plot of any, though the
help promises a plot: now one line up front says no plot will be drawn and why, and the predictions are as before.
"""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from saga.cli import app
from test_predict_inputs import fake_predictor  # noqa: F401 - the fixture: Predictor without a model


def test_no_class_tsigs_is_said_once_before_the_first_video(tmp_path: Path, fake_predictor: None) -> None:  # noqa: F811
    run, videos = tmp_path / "run", tmp_path / "videos"
    run.mkdir()
    videos.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (videos / name).write_bytes(b"x")
    result = CliRunner().invoke(app, ["predict", str(run), str(videos), "--tsig"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "class T-Sigs" in line]
    assert notes == [f"{run}: no class T-Sigs (tsig.npz, made from the test split) to compare with, so no --tsig plot "
                     "is drawn; each video's T-Sig profile is still computed (--format json: its `tsig`); run `saga "
                     f"tsig {run} --cache CACHE` first for the plots"]
    assert len([line for line in result.stdout.splitlines() if ": GEN-L syn-svd" in line]) == 3
    assert not (run / "predict").exists() or not any((run / "predict").iterdir())  # no plot
