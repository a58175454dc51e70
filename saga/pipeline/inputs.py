"""Finding the videos to extract and their generator labels.

Labels come from a CSV (`path,generator`, paths relative to the videos folder) or,
without one, from the first sub-folder name. Everything that looks like a video
is listed, including things that are not (a folder named x.mp4, a broken link),
so that extraction can record why each one failed instead of silently skipping it.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from saga.errors import SagaError
from saga.taxonomy import Taxonomy

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts"}
LABEL_COLUMNS = ("generator", "label", "source", "class")
DEFAULT_LABELS = "labels.csv"


@dataclass(frozen=True)
class VideoInput:
    """One video to extract: its path relative to the videos folder and its generator."""

    rel: str
    generator: str

    def absolute(self, root: Path) -> Path:
        return root / self.rel


def discover(videos: Path, labels: Path | None, taxonomy: Taxonomy) -> list[VideoInput]:
    """Videos with canonical generator names, sorted by path (labels are validated here)."""
    if not videos.is_dir():
        raise SagaError(f"{videos}: not a folder of videos; pass --videos DIR")
    if labels is None and (videos / DEFAULT_LABELS).is_file():
        labels = videos / DEFAULT_LABELS
    items = _from_csv(labels, taxonomy) if labels is not None else _from_folders(videos, taxonomy)
    if not items:
        raise SagaError(f"{videos}: no videos found (looked for {', '.join(sorted(VIDEO_SUFFIXES))})")
    return sorted(items, key=lambda v: v.rel)


def _from_csv(path: Path, taxonomy: Taxonomy) -> list[VideoInput]:
    if not path.is_file():
        raise SagaError(f"{path}: labels file not found; pass --labels CSV with columns path,generator")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        column = next((c for c in LABEL_COLUMNS if c in fields), None)
        if "path" not in fields or column is None:
            raise SagaError(f"{path}: needs a header with 'path' and 'generator' columns (found {fields})")
        seen: dict[str, int] = {}
        items = []
        for line, row in enumerate(reader, 2):
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            rel = os.path.normpath(row["path"])
            if not row["path"] or rel.startswith(".."):
                raise SagaError(f"{path}:{line}: path {row['path']!r} must be inside the videos folder")
            if rel in seen:
                raise SagaError(f"{path}:{line}: {rel} is listed twice (first on line {seen[rel]}); keep one")
            seen[rel] = line
            try:
                generator = taxonomy.canonical(row[column])
            except SagaError as exc:
                raise SagaError(f"{path}:{line}: {exc}") from None
            items.append(VideoInput(rel, generator))
    return items


def _from_folders(videos: Path, taxonomy: Taxonomy) -> list[VideoInput]:
    items = []
    for sub in sorted(p for p in videos.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.suffix.lower() in VIDEO_SUFFIXES:
            continue  # a folder named like a video at the top level has no generator folder
        try:
            generator = taxonomy.canonical(sub.name)
        except SagaError:
            raise SagaError(
                f"{sub}: folder name {sub.name!r} is not a generator of taxonomy '{taxonomy.name}'; "
                "rename it, pass --labels CSV, or pass --taxonomy FILE"
            ) from None
        for dirpath, dirnames, filenames in os.walk(sub):
            here = Path(dirpath)
            for name in [*filenames, *dirnames]:
                if Path(name).suffix.lower() in VIDEO_SUFFIXES:
                    items.append(VideoInput(str((here / name).relative_to(videos)), generator))
            dirnames[:] = [d for d in dirnames if Path(d).suffix.lower() not in VIDEO_SUFFIXES]
    return items
