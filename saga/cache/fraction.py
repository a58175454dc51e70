"""The stage-2 labelled subset: a seeded, stratified fraction (SAGA: 0.5 %) of the train split.

Per class at the level being trained, the videos are ordered by a seeded hash of
their path and the first k are taken, k = max(floor, round(fraction × n)) (at most
n). Hash order, not the order records arrive in, makes the subset a function of
(paths, level, fraction, floor, seed) alone; appending other videos to a class
keeps most of its picks. The floor guarantees every class has a positive for the
triplet loss. With `per_generator` m > 0 the first m videos (hash order) of every
generator (GEN-L class) in the class are taken first and the rest of k comes from the
class's remaining hash order: at a coarse level a few labels otherwise leave some of a
class's generators unlabelled, and those are the videos few-label runs miss most
(docs/ablation.md). Records without a class at the level (SD-L: generators with no SD
backbone) are excluded. Re-encoded copies (`saga extract --augment`) are not drawn
on their own: only original videos count towards k, and a drawn video brings its
copies along (a copy is the same labelled video, not another label).

The subset is saved as labelled.json in the run folder: a rerun with the same
settings reuses it (the run's labels never change under it, even if the cache
grew), and different settings against an existing file are refused; its classes and labels are
checked against the cache's (the file may have been edited).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

from saga.cache.manifest import VideoRecord, seeded_hash, source_key
from saga.errors import SagaError
from saga.fileio import read_json, write_json
from saga.taxonomy import Taxonomy, check_level

SETTINGS = ("level", "fraction", "floor", "per_generator", "seed", "cache_id")
LEGACY = {"per_generator": 0}  # settings older labelled.json files lack, with the value they were drawn with


def check_draw(level: str, fraction: float, floor: int, per_generator: int = 0) -> None:
    """How a labelled subset is drawn, or a one-line error (stage 2 checks its options with it before training)."""
    check_level(level)
    if not 0.0 < fraction <= 1.0:
        raise SagaError(f"fraction must be in (0, 1], got {fraction}")
    if floor < 1:
        raise SagaError(f"floor must be >= 1, got {floor}")
    if per_generator < 0:
        raise SagaError(f"per_generator must be >= 0, got {per_generator}")


def labelled_subset(records: Sequence[VideoRecord], level: str, taxonomy: Taxonomy, fraction: float = 0.005,
                    floor: int = 2, seed: int = 0, per_generator: int = 0) -> dict[str, list[str]]:
    """Class -> sorted paths of the labelled train videos, classes in the taxonomy's order (absent ones left out)."""
    check_draw(level, fraction, floor, per_generator)
    by_class: dict[str, list[str]] = {}
    copies: dict[str, list[str]] = {}
    generator: dict[str, str] = {}
    for rec in records:
        cls = rec.labels.get(level)
        if rec.ok and rec.split == "train" and cls is not None:
            is_copy, key = source_key(rec.path)
            if is_copy:
                copies.setdefault(key, []).append(rec.path)
            else:
                by_class.setdefault(cls, []).append(rec.path)
                generator[rec.path] = str(rec.labels.get("GEN-L") or cls)
    unknown = sorted(set(by_class) - set(taxonomy.classes(level)))
    if unknown:
        raise SagaError(f"records labelled {unknown[0]!r} at {level}, which taxonomy '{taxonomy.name}' lacks; "
                        "were they extracted with another taxonomy?")
    out: dict[str, list[str]] = {}
    for cls in taxonomy.classes(level):
        paths = sorted(set(by_class.get(cls, [])))
        if not paths:
            continue
        if len(paths) < floor:
            warnings.warn(f"{level} class {cls!r} has only {len(paths)} training video(s), fewer than the floor "
                          f"{floor}: using all of them", stacklevel=2)
        k = min(len(paths), max(floor, math.floor(fraction * len(paths) + 0.5)))
        drawn = _draw(sorted(paths, key=lambda p: seeded_hash(seed, p)), k, generator, per_generator)
        out[cls] = sorted(drawn + [c for p in drawn for c in copies.get(source_key(p)[1], [])])
    return out


def label_counts(subset: dict[str, list[str]]) -> dict[str, int]:
    """Labelled videos per class: the originals, not the re-encoded copies a drawn video brings along (a copy
    is the same labelled video, not another label)."""
    return {c: sum(not source_key(p)[0] for p in paths) for c, paths in subset.items()}


def counts_line(level: str, subset: dict[str, list[str]]) -> str:
    """One line with the labelled videos per class, fewest and most, each with its class: on GenVideo 0.5 %
    gives GEN-L classes 2 to 4,282 labels (docs/real-data.md), an imbalance the user should see."""
    counts = label_counts(subset)
    if not counts:
        return f"labelled per {level} class: none"
    lo, hi = min(counts.values()), max(counts.values())
    copies = sum(len(p) for p in subset.values()) - sum(counts.values())
    total = f"{sum(counts.values())} videos in {len(counts)} classes" + (
        f" (and {copies} re-encoded copies of them)" if copies else "")
    if lo == hi:
        return f"labelled per {level} class: {lo} each; {total}"
    return (f"labelled per {level} class: min {lo} ({_some(c for c in counts if counts[c] == lo)}) … "
            f"max {hi} ({_some(c for c in counts if counts[c] == hi)}); {total}")


def _some(names: Iterable[str], most: int = 3) -> str:
    names = list(names)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _draw(ranked: list[str], k: int, generator: dict[str, str], per_generator: int) -> list[str]:
    """The first `per_generator` of each generator in `ranked`, then the rest of `ranked` up to k in all."""
    if per_generator == 0:
        return ranked[:k]
    taken: dict[str, int] = {}
    first: list[str] = []
    for path in ranked:
        if taken.get(generator[path], 0) < per_generator:
            taken[generator[path]] = taken.get(generator[path], 0) + 1
            first.append(path)
    chosen = set(first)
    return first + [p for p in ranked if p not in chosen][: max(0, k - len(first))]


def settings(level: str, fraction: float, floor: int, seed: int, cache_id: str,
             per_generator: int = 0) -> dict[str, Any]:
    return {"level": level, "fraction": float(fraction), "floor": int(floor), "per_generator": int(per_generator),
            "seed": int(seed), "cache_id": cache_id}


def saved_settings(data: dict[str, Any]) -> dict[str, Any]:
    """The draw settings a labelled.json records (LEGACY values for those an older file lacks)."""
    return {k: data.get(k, LEGACY.get(k)) for k in SETTINGS}


def read_labelled(path: Path, wanted: dict[str, Any], records: Sequence[VideoRecord],
                  taxonomy: Taxonomy) -> dict[str, list[str]] | None:
    """The saved subset when it was made with `wanted` settings; None when there is none; refuse otherwise.

    The file may have been edited (a lone labelled.json is accepted in a new --out): its classes and
    labels must be the cache's, as a draw would give them (`check_subset`), classes in the taxonomy's order.
    """
    if not path.is_file():
        return None
    data = read_json(path, corrupt="; restore it, or delete the run folder and train again (the same settings draw "
                                   "the same subset)")
    drawn = saved_settings(data)
    differ = [f"{k}={drawn[k]!r} (asked {wanted[k]!r})" for k in SETTINGS if drawn[k] != wanted[k]]
    if differ:
        raise SagaError(f"{path}: the labelled subset was drawn with {', '.join(differ)}; "
                        "use another --out folder or the same settings")
    subset = data.get("classes")
    if not (isinstance(subset, dict) and all(isinstance(p, list) and all(isinstance(v, str) for v in p)
                                             for p in subset.values())):
        raise SagaError(f"{path}: 'classes' must map each class to a list of video paths; the file is damaged: "
                        "use another --out folder")
    recorded = [data[k] for k in ("counts", "available") if k in data]  # write_labelled's record of the draw
    if not all(isinstance(r, dict) for r in recorded):
        raise SagaError(f"{path}: 'counts' and 'available' must map classes to numbers; the file is damaged: "
                        "use another --out folder")
    check_subset(path, subset, wanted["level"], taxonomy, records, set().union(*recorded) if recorded else None)
    return {c: list(subset[c]) for c in taxonomy.classes(wanted["level"]) if c in subset}


def check_subset(path: Path, subset: dict[str, list[str]], level: str, taxonomy: Taxonomy,
                 records: Sequence[VideoRecord], drawn: set[str] | None = None) -> None:
    """Every class one of the level's, every video a train video of the cache listed once under its own
    label, and every class drawn listed: an edited file used to train silently on made-up classes,
    contradicted labels or a dropped class. `drawn`: the classes the file records drawing (its counts); a
    class the cache gained since is not required (the saved labels never change under a run). Without a
    record, every class with train videos (what a draw labels).
    """
    def bad(what: str) -> SagaError:
        return SagaError(f"{path}: {what}; the file was edited or is not this cache's: use another --out folder")

    label = {r.path: r.labels.get(level) for r in records if r.ok and r.split == "train"}
    lost = [p for paths in subset.values() for p in paths if p not in label]
    if lost:
        raise SagaError(f"{path}: {len(lost)} labelled video(s) are no longer train videos of the cache "
                        f"(e.g. {lost[0]}); use another --out folder")
    classes = set(taxonomy.classes(level))
    unknown = [c for c in subset if c not in classes]
    if unknown:
        raise bad(f"class {unknown[0]!r} is not a {level} class of taxonomy '{taxonomy.name}'")
    seen: set[str] = set()
    for cls, paths in subset.items():
        if not paths:
            raise bad(f"class {cls!r} lists no videos (a draw leaves out the classes without train videos)")
        for p in paths:
            if label[p] != cls:
                raise bad(f"{p} is listed under {cls!r} but the cache labels it {label[p]!r} at {level}")
            if p in seen:
                raise bad(f"{p} is listed twice")
            seen.add(p)
    expected = drawn if drawn is not None else (
        {label[p] for p in label if label[p] is not None and not source_key(p)[0]} & classes)
    missing = sorted(expected - set(subset))
    if missing:
        raise bad(f"class {missing[0]!r} lists no videos, but " + ("the file's counts record it" if drawn is not None
                  else "the cache has train videos of it (a draw labels every class that has some)"))


def write_labelled(path: Path, subset: dict[str, list[str]], wanted: dict[str, Any],
                   records: Sequence[VideoRecord]) -> None:
    """labelled.json: the settings, the labelled and available train videos per class (originals: copies do not
    count, as in the draw), the re-encoded copies brought along (when any), and the paths used."""
    available: dict[str, int] = {}
    for rec in records:
        cls = rec.labels.get(wanted["level"])
        if rec.ok and rec.split == "train" and cls is not None and not source_key(rec.path)[0]:
            available[cls] = available.get(cls, 0) + 1
    counts = label_counts(subset)
    copies = {c: len(p) - counts[c] for c, p in subset.items() if len(p) > counts[c]}
    write_json(path, {**wanted, "counts": counts, "available": {c: available.get(c, 0) for c in subset},
                      **({"copies": copies} if copies else {}), "classes": subset})


def draw(records: Sequence[VideoRecord], taxonomy: Taxonomy, wanted: dict[str, Any]) -> dict[str, list[str]]:
    """`labelled_subset` with the settings of `settings(...)`."""
    return labelled_subset(records, wanted["level"], taxonomy, wanted["fraction"], wanted["floor"], wanted["seed"],
                           wanted["per_generator"])


def saved_or_drawn(path: Path, records: Sequence[VideoRecord], taxonomy: Taxonomy,
                   wanted: dict[str, Any]) -> tuple[dict[str, list[str]], bool]:
    """The subset saved at `path` when it matches `wanted` (True), else a fresh draw (False, not saved).

    Training saves a fresh draw only once its run folder is open, so a refused run writes nothing.
    """
    subset = read_labelled(path, wanted, records, taxonomy)
    if subset is not None:
        return subset, True
    return draw(records, taxonomy, wanted), False


def resolve_labelled(path: Path, records: Sequence[VideoRecord], taxonomy: Taxonomy,
                     wanted: dict[str, Any]) -> dict[str, list[str]]:
    """Reuse `path` when it matches `wanted`, else draw the subset and save it there."""
    subset, saved = saved_or_drawn(path, records, taxonomy, wanted)
    if not saved:
        write_labelled(path, subset, wanted, records)
    return subset
