"""The warnings saga gives on purpose, as the tests that provoke them assert them.

A test that provokes one wraps the call in one of these (pytest.warns with `match=` on the key words), so the
warning disappearing fails the test, and the suite's warnings summary is left for warnings nobody expected
(pytest.warns re-emits every warning that does not match).
"""

from __future__ import annotations

import re

import pytest


def unreliable(what: str, n: int = 12) -> pytest.WarningsChecker:
    """A fit on fewer known val videos than it needs (`saga.openworld.embeddings.known_val`); `what` names the
    figure ("the temperature", ...). The tiny test caches hold 12 (4 known classes x 3), fewer than 30."""
    return pytest.warns(UserWarning, match=rf"only {n} known val videos: {re.escape(what)} is unreliable "
                                           r"\(fitted on fewer than \d+\)")


def other_cache() -> pytest.WarningsChecker:
    """A run scored on a cache of the same encoder and sampling that is not its training cache
    (`saga.runs.loading`)."""
    return pytest.warns(UserWarning, match=r"not the run's training cache \(\w+\), but extracted with the same "
                                           "encoder and sampling; evaluating anyway")


def seen_videos(split: str, left_out_of: str, n: int | None = None, total: int | None = None
                ) -> pytest.WarningsChecker:
    """`n` of a split's `total` videos (any number when None) are videos the run was trained (or validated) on,
    left out of `left_out_of` (`saga.explain.seen`)."""
    n_, total_ = (r"\d+" if x is None else str(x) for x in (n, total))
    return pytest.warns(UserWarning, match=rf"{n_} of the {total_} {split} videos are videos the run was (trained or "
                                           rf"validated|trained) on .* left out of {re.escape(left_out_of)}")


def unreliable_fold(held: str = "syn-hotshot", n: int = 12) -> pytest.WarningsChecker:
    """`unreliable` for a leave-one-generator-out fold's measurement (`saga.openworld.logo.fold_val`): given when
    the fold is measured, not when its kept measurement is reused."""
    return unreliable(f"fold {held}'s unknown threshold at the 95th percentile (and its prototype temperature τ)", n)
