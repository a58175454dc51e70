"""From a run's classes to every coarser level the taxonomy implies (for the head and enrolled classes).

A GEN-L run's class determines its team, SD backbone, task and real/fake, so probabilities at a
coarser level are sums over the classes that map to each coarser class. Generators without an SD
backbone are grouped as "none" at SD-L (so every video has a class there), and a class whose
coarser class the taxonomy leaves ambiguous ends that level's aggregation (it is not reported).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from saga.taxonomy import LEVELS, NO_SD, Taxonomy


def coarser_levels(level: str) -> list[str]:
    """The run's level and every coarser one, finest first."""
    return list(reversed(LEVELS[: LEVELS.index(level) + 1]))


def label_at(labels: Mapping[str, str | None], level: str) -> str:
    """A record's (or enrolled generator's) class at `level`, "none" for no SD backbone."""
    value = labels.get(level)
    return NO_SD if value is None else str(value)


def parents(taxonomy: Taxonomy, level: str, classes: Sequence[str], coarser: str) -> list[str] | None:
    """Each class's class at `coarser` ("none" for no SD backbone); None when one is ambiguous."""
    if coarser == level:
        return list(classes)
    out = []
    for cls in classes:
        members = {label_at(taxonomy.labels(g), coarser) for g in [*taxonomy.generators, "real"]
                   if label_at(taxonomy.labels(g), level) == cls}
        if len(members) != 1:
            return None
        out.append(members.pop())
    return out


def aggregate(probs: np.ndarray, parent: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Sum (n, C) probabilities into the coarser classes, in order of first appearance."""
    names = list(dict.fromkeys(parent))
    idx = np.array([names.index(p) for p in parent], np.int64)
    out = np.zeros((probs.shape[0], len(names)), np.float32)
    np.add.at(out.T, idx, probs.T)
    return names, out
