"""`saga predict`'s inputs and options, checked before any model is loaded."""

from __future__ import annotations

from pathlib import Path

from saga.predict import expand_inputs

from conftest import run_saga


def test_a_named_folder_is_expanded_whatever_its_name(tmp_path: Path) -> None:
    """`predict RUN clips.mp4/` said "is a directory, not a video file" instead of predicting the videos inside."""
    folder = tmp_path / "clips.mp4"
    (folder / "nested.avi").mkdir(parents=True)  # walked into, never taken as a video itself
    for rel in ("b.mp4", "nested.avi/a.mp4", "notes.txt"):
        (folder / rel).write_bytes(b"")
    single = tmp_path / "one.mp4"
    single.write_bytes(b"")
    assert expand_inputs([folder, single]) == [folder / "b.mp4", folder / "nested.avi" / "a.mp4", single]


def test_out_without_tsig_is_refused(tmp_path: Path) -> None:
    """--out only holds --tsig plots: without --tsig it was ignored silently, even an impossible one."""
    (tmp_path / "a.mp4").write_bytes(b"")
    proc = run_saga("predict", str(tmp_path / "run"), str(tmp_path / "a.mp4"), "--out", "/no/such/parent/x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--out /no/such/parent/x: only holds the --tsig plots; add --tsig" in " ".join(proc.stderr.split())
