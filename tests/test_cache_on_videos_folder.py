"""`--cache` given a folder of videos says to extract it first, not "create one with `saga extract --out VIDEOS`".

The old advice, followed, would have written the cache into the videos folder (refused there by extract, as the
folder is not empty: a second dead end). Found by a newcomer's `saga cache info vids`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from saga.cache.meta import require_cache
from saga.cli import app
from saga.errors import SagaError


@pytest.mark.parametrize("layout", ["real/a.mp4", "b.MOV"])  # a generator folder's videos, or loose ones
def test_a_videos_folder_given_as_a_cache_says_extract_it_first(tmp_path: Path, layout: str) -> None:
    videos = tmp_path / "vids"
    (videos / layout).parent.mkdir(parents=True, exist_ok=True)
    (videos / layout).write_bytes(b"x")
    with pytest.raises(SagaError) as caught:
        require_cache(videos)
    assert str(caught.value) == (f"{videos}: a folder of videos, not a saga cache; extract it first (`saga extract "
                                 f"--videos {videos} --out CACHE`) and pass that CACHE")
    result = CliRunner().invoke(app, ["cache", "info", str(videos)])
    assert result.exit_code != 0 and str(result.exception) == str(caught.value)


def test_a_folder_without_videos_keeps_the_create_advice(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(SagaError, match=r"not a saga cache \(no zarr.json\); create one with `saga extract --out"):
            require_cache(folder)
