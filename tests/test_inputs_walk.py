"""Walking the videos folder: folders that cannot be listed are reported (not skipped in silence),
linked sub-folders are followed once (loops end), and a name with a newline keeps its failure reason.

The machine may run the tests as root, whom chmod 000 does not stop: the listing is then denied by an
injected EACCES (`deny_listing`); `test_a_chmod_000_folder_is_reported` does it for real as another user.
"""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

import pytest
import typer

from conftest import make_video_tree, write_clip
from saga.errors import SagaError
from saga.pipeline.inputs import discover
from saga.taxonomy import Taxonomy
from test_taxonomy_inputs import touch

SYNTH = Taxonomy.load("synth")


def deny_listing(monkeypatch: pytest.MonkeyPatch, *folders: Path) -> None:
    """Listing any of `folders` (os.scandir, os.listdir) raises EACCES, as chmod 000 does to a user."""
    denied = {os.path.abspath(f) for f in folders}

    def guard(real):  # type: ignore[no-untyped-def]
        def listing(path: object = ".", *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            if isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)) in denied:
                raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
            return real(path, *args, **kwargs)
        return listing

    monkeypatch.setattr(os, "scandir", guard(os.scandir))
    monkeypatch.setattr(os, "listdir", guard(os.listdir))


# --- 1. folders that cannot be listed ----------------------------------------------------------------------

def test_an_unreadable_sub_folder_or_generator_folder_is_reported(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from saga.pipeline.inputs import find_inputs

    videos = touch(tmp_path / "v", "real/r.mp4", "real/batch2/a.mp4", "syn-svd/s.mp4", "syn-latte/l.mp4")
    deny_listing(monkeypatch, videos / "real" / "batch2", videos / "syn-svd")
    inputs = find_inputs(videos, None, SYNTH)
    assert [i.rel for i in inputs.items] == ["real/r.mp4", "syn-latte/l.mp4"]
    assert inputs.unreadable == [(str(videos / "real" / "batch2"), "Permission denied"),
                                 (str(videos / "syn-svd"), "Permission denied")]
    deny_listing(monkeypatch, videos / "real", videos / "syn-latte")  # nothing left: the error says why
    with pytest.raises(SagaError, match=r"no videos found .*real: cannot list this folder \(Permission denied\); "
                                        r"its videos are skipped: make it readable \(chmod a\+rx .*real\) and rerun"):
        find_inputs(videos, None, SYNTH)
    deny_listing(monkeypatch, videos)  # the videos folder itself: one line, no traceback
    with pytest.raises(SagaError, match=r"v: cannot list this folder \(Permission denied\)"):
        find_inputs(videos, None, SYNTH)


def test_extract_names_each_unreadable_folder_and_exits_1(tmp_path: Path, tiny_weights: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from saga.cache.store import FeatureCache
    from saga.commands import phase1

    videos = make_video_tree(tmp_path / "v", per_class=1, generators=("real", "syn-svd"))
    write_clip(videos / "real" / "batch2" / "a.mp4", n_frames=6, seed=7)
    deny_listing(monkeypatch, videos / "real" / "batch2")
    with pytest.raises(typer.Exit) as info:
        phase1.extract(videos=videos, out=tmp_path / "c", encoder="saga-tiny-vit", pretrained=str(tiny_weights),
                       frames=8, workers=0, device="cpu", taxonomy="synth")
    assert info.value.exit_code == 1  # incomplete, as when a video fails (it was 0)
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if "cannot list this folder" in line]
    assert lines == [f"warning: {videos}/real/batch2: cannot list this folder (Permission denied); its videos are "
                     f"skipped: make it readable (chmod a+rx {videos}/real/batch2) and rerun"]
    assert sorted(r.path for r in FeatureCache.open(tmp_path / "c").records()) == ["real/real_0.mp4",
                                                                                  "syn-svd/syn-svd_0.mp4"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists through chmod 000; the injected tests cover it")
def test_a_chmod_000_folder_is_reported(tmp_path: Path) -> None:
    from saga.pipeline.inputs import find_inputs

    videos = touch(tmp_path / "v", "real/r.mp4", "real/batch2/a.mp4", "syn-svd/s.mp4")
    (videos / "real" / "batch2").chmod(0)
    try:
        inputs = find_inputs(videos, None, SYNTH)
    finally:
        (videos / "real" / "batch2").chmod(0o755)
    assert [i.rel for i in inputs.items] == ["real/r.mp4", "syn-svd/s.mp4"]
    assert [folder for folder, _ in inputs.unreadable] == [str(videos / "real" / "batch2")]


# --- 2. linked sub-folders ---------------------------------------------------------------------------------

def test_a_linked_sub_folder_is_followed_and_loops_end(tmp_path: Path) -> None:
    touch(tmp_path, "v/real/r.mp4", "v/syn-svd/s.mp4", "store/b/l.mp4", "store/b/deep/m.mp4", "v/.pool/p.mp4")
    videos = tmp_path / "v"
    os.symlink("../../store/b", videos / "syn-svd" / "batch2")  # followed, as a linked generator folder is
    os.symlink("../.pool", videos / "real" / "pool")  # a hidden folder is no generator: followed
    os.symlink("..", tmp_path / "store" / "b" / "deep" / "loop")  # a loop outside: store/b is walked once
    os.symlink("..", videos / "real" / "up")  # loops and links into generator folders list nothing twice
    os.symlink("../real", videos / "syn-svd" / "other")
    os.symlink("../..", videos / "syn-svd" / "top")
    with pytest.warns(UserWarning, match="linked folder not followed") as caught:
        found = {(i.rel, i.generator) for i in discover(videos, None, SYNTH)}
    assert found == {("real/r.mp4", "real"), ("real/pool/p.mp4", "real"), ("syn-svd/s.mp4", "syn-svd"),
                     ("syn-svd/batch2/l.mp4", "syn-svd"), ("syn-svd/batch2/deep/m.mp4", "syn-svd")}
    assert sorted(str(w.message).split(": linked folder not followed (")[0] for w in caught) == [
        f"{videos}/real/up", f"{videos}/syn-svd/batch2/deep/loop", f"{videos}/syn-svd/other", f"{videos}/syn-svd/top"]


def test_a_link_to_another_generators_linked_folder_lists_its_videos_once(tmp_path: Path) -> None:
    touch(tmp_path, "v/real/r.mp4", "v/syn-svd/s.mp4", "store/latte/l.mp4")
    videos = tmp_path / "v"
    os.symlink("../store/latte", videos / "syn-latte")
    os.symlink("../../store/latte", videos / "syn-svd" / "batch2")  # its videos are syn-latte's, once
    with pytest.warns(UserWarning, match=r"syn-svd/batch2: linked folder not followed \(already listed under "
                                         r"syn-latte\)"):
        assert [i.rel for i in discover(videos, None, SYNTH)] == ["real/r.mp4", "syn-latte/l.mp4", "syn-svd/s.mp4"]


def test_each_linked_folder_not_followed_is_one_warning_naming_why(tmp_path: Path) -> None:
    """A loop or a link to a folder already listed was skipped without a word: it looked like lost videos."""
    touch(tmp_path, "v/real/r.mp4", "v/real/sub/q.mp4", "v/syn-svd/s.mp4", "v/syn-svd/d/deep.mp4",
          "store/b/l.mp4", "store/b/x/m.mp4")
    videos = tmp_path / "v"
    os.symlink("../../store/b", videos / "syn-svd" / "batch2")  # followed: no warning
    os.symlink("..", tmp_path / "store" / "b" / "x" / "loop")  # a loop outside the videos folder
    os.symlink("..", videos / "syn-svd" / "d" / "up")  # a loop inside a generator folder
    os.symlink("..", videos / "real" / "top")  # back to the videos folder itself
    os.symlink("../real/sub", videos / "syn-svd" / "other")  # into another generator's folder
    os.symlink("../../store/b", videos / "syn-svd" / "zagain")  # a second link to a folder already walked
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = {(i.rel, i.generator) for i in discover(videos, None, SYNTH)}
    assert found == {("real/r.mp4", "real"), ("real/sub/q.mp4", "real"), ("syn-svd/s.mp4", "syn-svd"),
                     ("syn-svd/d/deep.mp4", "syn-svd"), ("syn-svd/batch2/l.mp4", "syn-svd"),
                     ("syn-svd/batch2/x/m.mp4", "syn-svd")}  # every video once, none lost
    tail = "; its videos are listed once, none is lost"
    store = os.path.realpath(tmp_path / "store" / "b")
    assert sorted(str(w.message) for w in caught) == sorted([
        f"{videos}/syn-svd/zagain: linked folder not followed (already listed under syn-svd/batch2){tail}",
        f"{videos}/real/top: linked folder not followed (a link loop: it leads back to {videos.resolve()}){tail}",
        f"{videos}/syn-svd/batch2/x/loop: linked folder not followed (a link loop: it leads back to {store}){tail}",
        f"{videos}/syn-svd/d/up: linked folder not followed (a link loop: it leads back to "
        f"{videos.resolve() / 'syn-svd'}){tail}",
        f"{videos}/syn-svd/other: linked folder not followed (already listed under real/sub){tail}"])


# --- 3. a newline in a failed video's name -------------------------------------------------------------------

def test_a_failed_name_with_a_newline_keeps_its_reason_on_one_line(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from saga.commands.phase1 import _print_summary
    from saga.pipeline.reader import decode_one
    from saga.pipeline.sampling import SamplingPolicy
    from saga.pipeline.summary import ExtractSummary

    bad = tmp_path / "clip\n2.mp4"
    bad.write_text("not a video\n")
    error = decode_one(bad, SamplingPolicy(frames=8), preprocess=lambda x: x).error
    assert error.startswith(repr(str(bad)) + ": not a video or truncated (") and "\n" not in error
    _print_summary(ExtractSummary(cache=tmp_path / "c", failed=1, failures=[("real/clip\n2.mp4", error)]))
    lines = capsys.readouterr().err.splitlines()
    assert f"  'real/clip\\n2.mp4': {error}" in lines


# --- 4. a labels.csv naming a video under a folder that cannot be searched --------------------------------------

def deny_search(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """`folder` behaves as chmod a-rx does to a user: it cannot be listed, and nothing below it can be stat'ed,
    opened or accessed (EACCES), while the folder itself still can."""
    deny_listing(monkeypatch, folder)
    top = os.path.abspath(folder)

    def below(path: object) -> bool:
        return isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)).startswith(
            top + os.sep)

    def guard(real):  # type: ignore[no-untyped-def]
        def call(path: object, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            if below(path):
                raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))  # type: ignore[arg-type]
            return real(path, *args, **kwargs)
        return call

    real_access = os.access

    def access(path: object, mode: int, *args: object, **kwargs: object) -> bool:
        if below(path) or os.path.abspath(os.fsdecode(path)) == top and mode & os.X_OK:  # type: ignore[arg-type]
            return False
        return real_access(path, mode, *args, **kwargs)  # type: ignore[arg-type]

    for name in ("stat", "lstat", "open"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    monkeypatch.setattr(os, "access", access)


def test_a_labelled_video_in_an_unsearchable_folder_fails_as_permission_denied_and_is_retried(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from saga.cache.store import FeatureCache
    from saga.commands import phase1

    videos = make_video_tree(tmp_path / "v", per_class=1, generators=("real", "syn-svd"))
    write_clip(videos / "real" / "locked" / "a.mp4", n_frames=6, seed=7)
    (videos / "labels.csv").write_text("path,generator\nreal/real_0.mp4,real\nsyn-svd/syn-svd_0.mp4,syn-svd\n"
                                       "real/locked/a.mp4,real\n")
    locked = videos / "real" / "locked"
    deny_search(monkeypatch, locked)
    args = dict(videos=videos, out=tmp_path / "c", encoder="saga-tiny-vit", pretrained=str(tiny_weights),
                frames=8, workers=0, device="cpu", taxonomy="synth")
    with pytest.raises(typer.Exit) as info:
        phase1.extract(**args)
    assert info.value.exit_code == 1
    records = {r.path: r for r in FeatureCache.open(tmp_path / "c").records()}
    # it was "PermissionError: [Errno 13] Permission denied: '...'", which the retry check did not match
    assert records["real/locked/a.mp4"].error == (f"{locked}/a.mp4: permission denied (folder {locked} cannot be "
                                                  f"searched); chmod a+rx {locked} and rerun")
    stderr = capsys.readouterr().err
    assert f"1 folder(s) could not be listed (e.g. {locked}: Permission denied)" in stderr  # labels.csv's warning
    monkeypatch.undo()  # chmod a+rx: the next pass retries it
    phase1.extract(**args)
    assert {r.path: r for r in FeatureCache.open(tmp_path / "c").records()}["real/locked/a.mp4"].ok


def test_the_unlisted_videos_warning_names_the_folders_it_could_not_list(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from saga.pipeline.inputs import find_inputs

    videos = touch(tmp_path / "v", "real/r.mp4", "real/old.mp4", "syn-svd/s.mp4", "syn-svd/hidden/h.mp4")
    (videos / "labels.csv").write_text("path,generator\nreal/r.mp4,real\nsyn-svd/s.mp4,syn-svd\n")
    deny_listing(monkeypatch, videos / "syn-svd" / "hidden")
    with pytest.warns(UserWarning) as rec:
        assert [i.rel for i in find_inputs(videos, None, SYNTH).items] == ["real/r.mp4", "syn-svd/s.mp4"]
    assert [str(w.message) for w in rec] == [
        f"{videos}/labels.csv: 1 video(s) in {videos} are not listed in it (e.g. real/old.mp4) and are skipped; add "
        f"them to it, or move it away to label by folder; 1 folder(s) could not be listed (e.g. {videos}/syn-svd/"
        f"hidden: Permission denied), so the videos there that it leaves out are not counted: make them readable "
        f"(chmod a+rx {videos}/syn-svd/hidden) and rerun to check"]
    (videos / "real" / "old.mp4").unlink()  # every video it can see is listed: the folder alone is still named
    with pytest.warns(UserWarning, match=r"labels.csv: 1 folder\(s\) could not be listed \(e.g. .*hidden"):
        find_inputs(videos, None, SYNTH)


# --- 5. one real file reached through two generator folders ------------------------------------------------

def caught_discover(videos: Path) -> tuple[set[tuple[str, str]], list[str]]:
    """discover's (path, generator) pairs and every warning it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = [(i.rel, i.generator) for i in discover(videos, None, GENVIDEO)]
    assert len(found) == len(set(found))
    return set(found), [str(w.message) for w in caught]


GENVIDEO = Taxonomy.load("genvideo")
TWO_LABELS = "(one video under two generators trains both, and may land in both train and test)"


@pytest.mark.parametrize("second", ["../data/show1", "Show-1/sub"])
def test_two_generator_folders_leading_to_one_place_list_each_video_once(tmp_path: Path, second: str) -> None:
    """`Show_1 -> /data/show1` beside `Show-1 -> /data/show1` (or a link into the other) listed every video under
    both names: one video in two classes, perhaps in train and in test."""
    touch(tmp_path, "data/show1/sub/a.mp4", "data/show1/sub/b.mp4", "data/show1/sub/deep/c.mp4", "v/Real/r.mp4")
    videos = tmp_path / "v"
    os.symlink("../data/show1", videos / "Show-1")
    os.symlink(second, videos / "Show_1")  # sorts after Show-1: its videos stay under Show-1
    found, messages = caught_discover(videos)
    assert found == {("Real/r.mp4", "real"), ("Show-1/sub/a.mp4", "Show-1"), ("Show-1/sub/b.mp4", "Show-1"),
                     ("Show-1/sub/deep/c.mp4", "Show-1")}
    first = "Show-1" if second.startswith("..") else "Show-1/sub"
    assert messages == [f"{videos}/Show_1: leads to the same folder as {videos}/{first}; its 3 video(s) are listed "
                        f"once, under {first} {TWO_LABELS}: remove the link you did not mean"]


def test_a_generator_folder_linked_into_a_later_one_keeps_its_videos(tmp_path: Path) -> None:
    """The first folder in sorted order keeps them, whichever is the link."""
    touch(tmp_path, "v/Real/r.mp4", "v/Show-1/s.mp4", "v/Show-1/sub/m.mp4")
    videos = tmp_path / "v"
    os.symlink("Show-1/sub", videos / "Latte")
    found, messages = caught_discover(videos)
    assert found == {("Real/r.mp4", "real"), ("Show-1/s.mp4", "Show-1"), ("Latte/m.mp4", "Latte")}
    assert messages == [f"{videos}/Show-1/sub: leads to the same folder as {videos}/Latte; its 1 video(s) are listed "
                        f"once, under Latte {TWO_LABELS}: remove the link you did not mean"]


def test_a_video_linked_into_two_generator_folders_is_listed_once_with_one_warning_per_folder(tmp_path: Path) -> None:
    touch(tmp_path, "v/Real/r.mp4", "v/Show-1/a.mp4", "v/Show-1/b.mp4", "v/Show-1/c.mp4")
    videos = tmp_path / "v"
    (videos / "Sora").mkdir()  # sorts after Show-1
    os.link(videos / "Show-1" / "a.mp4", videos / "Sora" / "a.mp4")  # a hard link
    os.symlink("../Show-1/b.mp4", videos / "Sora" / "bb.mp4")  # a link to one file
    (videos / "Sora" / "own.mp4").write_bytes(b"x")
    os.link(videos / "Real" / "r.mp4", videos / "Real" / "r2.mp4")  # twice in one folder: train and test
    found, messages = caught_discover(videos)
    assert found == {("Real/r.mp4", "real"), ("Show-1/a.mp4", "Show-1"), ("Show-1/b.mp4", "Show-1"),
                     ("Show-1/c.mp4", "Show-1"), ("Sora/own.mp4", "Sora")}
    assert messages == [
        f"{videos}/Real: 1 video(s) are the same file as another video in it (e.g. Real/r2.mp4 is Real/r.mp4: a link "
        "or hard link); each is listed once (a video listed twice may land in both train and test): remove the "
        "copies you did not mean",
        f"{videos}/Sora: 2 video(s) are the same file as a video under {videos}/Show-1 (e.g. Sora/a.mp4 is "
        f"Show-1/a.mp4: a link or hard link); each is listed once, under Show-1 {TWO_LABELS}: remove the copies you "
        "did not mean"]


def test_a_labels_csv_naming_one_file_twice_is_one_line_naming_the_rows(tmp_path: Path) -> None:
    from saga.pipeline.inputs import find_inputs

    videos = touch(tmp_path / "v", "real/r.mp4", "syn-svd/s.mp4", "syn-svd/t.mp4")
    os.link(videos / "syn-svd" / "s.mp4", videos / "syn-latte.mp4")
    os.symlink("syn-svd/t.mp4", videos / "t.mp4")
    labels = videos / "labels.csv"
    labels.write_text("path,generator\nreal/r.mp4,real\nsyn-svd/s.mp4,syn-svd\n\nsyn-latte.mp4,syn-latte\n"
                      "syn-svd/t.mp4,syn-svd\nt.mp4,syn-svd\n")
    with pytest.raises(SagaError) as info:
        find_inputs(videos, None, SYNTH)
    assert str(info.value) == (f"{labels}:5: syn-latte.mp4 is the same file as syn-svd/s.mp4 on line 3 (a link or "
                               "hard link), labelled syn-latte here and syn-svd there; 1 more row(s) repeat a file of "
                               "another row; keep one row per video, with its right generator")
    labels.write_text("path,generator\nreal/r.mp4,real\nsyn-svd/t.mp4,syn-svd\nt.mp4,syn-svd\n")
    with pytest.raises(SagaError, match=r"labels.csv:4: t.mp4 is the same file as syn-svd/t.mp4 on line 3 \(a link "
                                        r"or hard link\); keep one row per video"):
        find_inputs(videos, None, SYNTH)


def test_a_labels_csv_listing_a_video_by_its_link_does_not_leave_it_out(tmp_path: Path) -> None:
    """The folder walk lists the hard link under syn-latte (sorted first); the CSV names the same file."""
    from saga.pipeline.inputs import find_inputs

    videos = touch(tmp_path / "v", "real/r.mp4", "syn-svd/s.mp4")
    (videos / "syn-latte").mkdir()
    os.link(videos / "syn-svd" / "s.mp4", videos / "syn-latte" / "s.mp4")
    (videos / "labels.csv").write_text("path,generator\nreal/r.mp4,real\nsyn-svd/s.mp4,syn-svd\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "1 video(s) ... are not listed in it (e.g. syn-latte/s.mp4)" before
        assert [i.rel for i in find_inputs(videos, None, SYNTH).items] == ["real/r.mp4", "syn-svd/s.mp4"]


def test_a_link_to_a_folder_above_the_videos_folder_is_not_followed(tmp_path: Path) -> None:
    """Followed, it listed every video beside the videos folder (here `outside/o.mp4`) under this generator."""
    touch(tmp_path, "v/real/r.mp4", "v/syn-svd/s.mp4", "outside/o.mp4")
    videos = tmp_path / "v"
    os.symlink("../..", videos / "syn-svd" / "up")  # tmp_path: holds the videos folder and `outside`
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = [i.rel for i in discover(videos, None, SYNTH)]
    assert found == ["real/r.mp4", "syn-svd/s.mp4"]
    assert [str(w.message) for w in caught] == [
        f"{videos}/syn-svd/up: linked folder not followed (a link loop: it leads back to {tmp_path.resolve()}); "
        "its videos are listed once, none is lost"]


def test_a_generator_folder_linked_to_a_folder_above_the_videos_folder_is_not_walked(tmp_path: Path) -> None:
    """`v/syn-svd -> ..` listed `outside/o.mp4` as syn-svd; now one warning says why nothing came from it."""
    touch(tmp_path, "v/real/r.mp4", "outside/o.mp4")
    videos = tmp_path / "v"
    os.symlink("..", videos / "syn-svd")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = [i.rel for i in discover(videos, None, SYNTH)]
    assert found == ["real/r.mp4"]
    assert [str(w.message) for w in caught] == [
        f"{videos}/syn-svd: linked folder not followed (a link loop: it leads back to {tmp_path.resolve()}); "
        "its videos are listed once, none is lost"]
