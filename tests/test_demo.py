"""`saga demo` edges that need no full demo run (`make demo` runs it end to end)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_a_demo_too_small_for_a_tsne_skips_it_with_a_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`saga demo --per-class 1` trained every level, then stopped at the t-SNE ("only 1 test videos")."""
    import saga.explain.tsne as tsne
    from saga import demo
    from saga.errors import SagaError

    def too_few(*args: object, **kwargs: object) -> None:
        raise SagaError("cache: only 1 test videos; t-SNE needs at least 5")

    monkeypatch.setattr(tsne, "run_tsne", too_few)
    lines: list[str] = []
    demo._tsne_or_skip(tmp_path / "run", tmp_path / "cache", "GEN-L", "cpu", lines.append)
    assert lines == ["GEN-L: t-SNE skipped (cache: only 1 test videos; t-SNE needs at least 5)"]
