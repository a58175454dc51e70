"""The DataLoader's timeout is a poll, known by where torch raised it, not by its words (saga.pipeline.stream.Polls).

`_pooled` told a poll from a real error by torch's text "DataLoader timed out": a rewording in another torch
release would have turned every poll, i.e. every video slower than a quarter of --hang-limit, into a crash."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from conftest import alarm_guard, make_video_tree
from saga.pipeline import reader
from saga.pipeline.extract import extract
from saga.pipeline.stream import Polls
from test_extract import config

REWORDED = "no batch arrived within the loader's time limit"  # torch's timeout, in other words


@pytest.fixture
def reworded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """torch's timeout RuntimeError with other words; the list counts how many were raised."""
    raised: list[int] = []
    get_data = _MultiProcessingDataLoaderIter._get_data

    def _get_data(self: Any) -> Any:
        try:
            return get_data(self)
        except RuntimeError as exc:
            if "DataLoader timed out" not in str(exc):
                raise
            raised.append(1)
            raise RuntimeError(REWORDED) from None

    monkeypatch.setattr(_MultiProcessingDataLoaderIter, "_get_data", _get_data)
    return raised


def _in_worker() -> bool:
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None


def test_a_reworded_timeout_is_still_a_poll(tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch,
                                            reworded: list[int]) -> None:
    """A video taking 2.5 s under a 4 s --hang-limit (polled each second) is waited for, not a crash."""
    videos = make_video_tree(tmp_path / "v", per_class=1)
    decode = reader.decode_one

    def slow(path: Path, policy: object, preprocess: object, index: int = 0):  # noqa: ANN202
        if _in_worker() and index == 0:
            time.sleep(2.5)
        return decode(path, policy, preprocess, index)

    monkeypatch.setattr(reader, "decode_one", slow)
    with alarm_guard(120, "the extraction did not finish"):
        summary = extract(config(videos, tmp_path / "c", tiny_weights, workers=1, hang_limit=4, alone_limit=60))
    assert reworded, "no poll happened: the test proves nothing"
    assert summary.ok == 3 and summary.failed == 0 and not multiprocessing.active_children()


class _Items(Dataset):
    """Item 0 late (the loader times out meanwhile); item `broken` raises an error that reads like a timeout."""

    def __init__(self, broken: int = -1) -> None:
        self.broken = broken

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> int:
        if i == 0:
            time.sleep(1.0)
        if i == self.broken:
            raise RuntimeError("DataLoader timed out after 5 seconds")
        return i


def _polled(loader: DataLoader) -> Iterator[int | str]:
    """The loader's items, "poll" for each timeout, as `_pooled` reads them."""
    pool = iter(loader)
    polls = Polls(pool)
    assert polls.hooked, "torch's DataLoader iterator has no _try_get_data: Polls falls back to the message text"
    try:
        while True:
            try:
                yield polls.next(pool)
            except StopIteration:
                return
            except RuntimeError as exc:
                if not polls.is_poll(exc):
                    raise
                yield "poll"
    finally:
        pool._shutdown_workers()


def _loader(broken: int = -1) -> DataLoader:
    return DataLoader(_Items(broken), batch_size=None, num_workers=1, timeout=0.2)


def test_the_hook_holds_on_this_torch(reworded: list[int]) -> None:
    got = list(_polled(_loader()))
    assert [x for x in got if x != "poll"] == [0, 1, 2] and "poll" in got and reworded


def test_a_worker_error_worded_like_a_timeout_is_not_a_poll() -> None:
    """The old text check took it for a poll: the video was silently skipped."""
    with pytest.raises(RuntimeError, match="Caught RuntimeError in DataLoader worker"):
        list(_polled(_loader(broken=1)))


def test_without_the_hook_the_text_decides() -> None:
    """A later torch without `_try_get_data`: torch's wording still counts; anything else stays an error."""
    polls = Polls(object())
    assert not polls.hooked
    assert polls.is_poll(RuntimeError("DataLoader timed out after 1.0 seconds"))
    assert not polls.is_poll(RuntimeError(REWORDED))

