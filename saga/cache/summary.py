"""What a cache holds, as one JSON-ready dict: `saga cache info` prints it, tools can read it."""

from __future__ import annotations

from collections import Counter
from typing import Any

from saga.cache.store import FeatureCache
from saga.taxonomy import LEVELS


def cache_summary(cache: FeatureCache) -> dict[str, Any]:
    """Counts per split and per class at every level (classes in the taxonomy's order, as `saga taxonomy show`
    and `evaluate` list them), failures, provenance, and the taxonomy's generators without an ok video (a
    generator folder that was empty or still archived gave none, silently)."""
    records = cache.records()
    ok = [r for r in records if r.ok]
    taxonomy = cache.taxonomy
    per_level: dict[str, dict[str, dict[str, int]]] = {}
    for level in LEVELS:
        table: dict[str, Counter] = {}
        for r in ok:
            cls = r.labels.get(level)
            if cls is not None:
                table.setdefault(cls, Counter())[r.split] += 1
        order = [c for c in taxonomy.classes(level) if c in table] + sorted(set(table) - set(taxonomy.classes(level)))
        per_level[level] = {cls: dict(table[cls]) for cls in order}
    return {
        "cache": str(cache.root),
        "cache_id": cache.cache_id,
        "total": len(records),
        "ok": len(ok),
        "failed": len(records) - len(ok),
        "splits": dict(Counter(r.split for r in ok)),
        "classes": per_level,
        "without_videos": [c for c in taxonomy.classes("GEN-L") if c not in per_level["GEN-L"]],
        "parts": cache.part_names(),
        "provenance": cache.attrs,
        "videos": [
            {"path": r.path, "status": r.status, "error": r.error, "generator": r.generator, "split": r.split,
             "checksum": r.checksum, "labels": r.labels, "part": r.part, "row": r.row}
            for r in records
        ],
    }
