"""A generator folder that cannot be listed is reported as such, once: it is not also called empty.

Its listing failing (EACCES) left it without videos, so discovery warned "generator folder holds no videos (it is
empty)" beside the "cannot list this folder" line: a false reason, and a fix ("put its videos there") that
does not fix it.
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


def test_an_unlisted_generator_folder_is_not_called_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    videos = touch(tmp_path / "v", "real/r.mp4", "syn-svd/s.mp4")
    (videos / "syn-latte").mkdir()  # really empty: still warned about
    deny_listing(monkeypatch, videos / "syn-svd")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inputs = find_inputs(videos, None, SYNTH)
    assert [i.rel for i in inputs.items] == ["real/r.mp4"]
    assert inputs.unreadable == [(str(videos / "syn-svd"), "Permission denied")]  # reported as unreadable
    assert [str(w.message) for w in caught] == [
        f"{videos / 'syn-latte'}: generator folder holds no videos (it is empty), so syn-latte gets none from it; "
        "put its videos there and rerun, or remove the folder"]
