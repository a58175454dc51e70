"""A folder that cannot be listed (or one inside it) is reported as unreadable only, whatever its name.

tests/test_inputs_unlisted_generator.py covers a generator folder; here a folder the taxonomy does not know and a
generator folder whose only subfolder is unreadable: both were also called folders "without videos" / "empty".
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from saga.pipeline.inputs import find_inputs
from saga.taxonomy import Taxonomy
from test_inputs_walk import deny_listing
from test_taxonomy_inputs import touch

SYNTH = Taxonomy.load("synth")


def _find(videos: Path) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inputs = find_inputs(videos, None, SYNTH)
    return [i.rel for i in inputs.items], [str(w.message) for w in caught], inputs.unreadable


def test_an_unlisted_unknown_folder_is_not_called_a_folder_without_videos(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    videos = touch(tmp_path / "v", "real/r.mp4", "syn-svd/s.mp4", "index/x.mp4")
    deny_listing(monkeypatch, videos / "index")
    items, said, unreadable = _find(videos)
    assert items == ["real/r.mp4", "syn-svd/s.mp4"]
    assert unreadable == [(str(videos / "index"), "Permission denied")]
    assert said == []


def test_a_generator_whose_only_subfolder_is_unlisted_is_not_called_empty(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    videos = touch(tmp_path / "v", "real/r.mp4", "syn-svd/part1/s.mp4")
    deny_listing(monkeypatch, videos / "syn-svd" / "part1")
    items, said, unreadable = _find(videos)
    assert items == ["real/r.mp4"]
    assert unreadable == [(str(videos / "syn-svd" / "part1"), "Permission denied")]
    assert said == []
