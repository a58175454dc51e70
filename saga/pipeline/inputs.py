"""Finding the videos to extract and their generator labels.

Labels come from a CSV (`path,generator`, paths relative to the videos folder) or,
without one, from the first sub-folder name (matched as `Taxonomy.canonical` does, so
`Show_1` is `Show-1`). Everything that looks like a video
is listed, including things that are not (a folder named x.mp4, a broken link),
so that extraction can record why each one failed instead of silently skipping it; a folder
that cannot be listed is reported (`Inputs.unreadable`), linked sub-folders are followed, and a real
file reached twice (links, hard links) is listed once (`saga.pipeline.walk`); in a labels CSV it is an error.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from saga.cache.manifest import VIDEO_SUFFIXES
from saga.errors import SagaError, shown
from saga.progress import ProgressFn, StepCount
from saga.pipeline.layout import (archives_line, empty_line, known, mislabelled_error, nested_classes,
                                  unknown_folders_error)
from saga.pipeline.walk import FileKey, Walk, file_key, generator_folders
from saga.taxonomy import Taxonomy

LABEL_COLUMNS = ("generator", "label", "source", "class")
DEFAULT_LABELS = "labels.csv"


@dataclass(frozen=True)
class VideoInput:
    """One video to extract: its path relative to the videos folder and its generator."""

    rel: str
    generator: str

    def absolute(self, root: Path) -> Path:
        return root / self.rel


@dataclass(frozen=True)
class Inputs:
    """The videos to extract, and the folders that could not be listed (folder, reason): their videos are
    missing from `items`, so the pass is incomplete and says so."""

    items: list[VideoInput]
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def discover(videos: Path, labels: Path | None, taxonomy: Taxonomy, allow_outside: bool = False) -> list[VideoInput]:
    """The videos of `find_inputs`, without the folders it could not list."""
    return find_inputs(videos, labels, taxonomy, allow_outside).items


def check_videos_folder(videos: Path) -> None:
    """--videos names a folder, or a one-line error (`saga extract` checks it before importing torch)."""
    if not videos.is_dir():
        raise SagaError(f"{videos}: not a folder of videos; pass --videos DIR")


def find_inputs(videos: Path, labels: Path | None, taxonomy: Taxonomy, allow_outside: bool = False,
                progress: ProgressFn | None = None) -> Inputs:
    """Videos with canonical generator names, sorted by path (labels are validated here).

    Paths in a labels CSV must stay inside the videos folder: `..` and absolute paths are
    refused unless `allow_outside` (the `--allow-outside-paths` flag) says otherwise. `progress` gets
    the scan's status events (`StepCount`: files gone through; a large folder takes minutes).
    """
    check_videos_folder(videos)
    found_labels = labels is None and (videos / DEFAULT_LABELS).is_file()
    if found_labels:
        labels = videos / DEFAULT_LABELS
    if labels is not None:
        count = StepCount(progress, f"reading {shown(labels)}", unit="rows")
        rows = _from_csv(labels, taxonomy, allow_outside)
        if not rows:
            raise SagaError(f"{labels}: no rows below the header; add one line path,generator per video")
        keys = _one_row_per_file(videos, str(labels), rows, count)
        inputs = Inputs([item for _, item in rows])
        if found_labels:
            _warn_unlisted(videos, labels, inputs.items, keys,
                           StepCount(progress, f"scanning {shown(videos)} for videos {labels.name} leaves out"))
    else:
        inputs = _from_folders(videos, taxonomy, StepCount(progress, f"scanning {shown(videos)}"))
    if not inputs.items:
        raise SagaError(f"{videos}: no videos found (looked for {', '.join(sorted(VIDEO_SUFFIXES))})"
                        + "".join(f"; {unreadable_line(*u)}" for u in inputs.unreadable[:3]))
    return Inputs(sorted(inputs.items, key=lambda v: v.rel), inputs.unreadable)


def read_labels_text(path: Path) -> str:
    """The labels CSV as text: UTF-8 (a leading BOM is accepted), or a one-line error."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SagaError(f"{path}: cannot read labels file ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SagaError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from None


def check_labels_file(path: Path) -> None:
    """--labels names a file, or a one-line error (`saga extract` checks it before importing torch)."""
    if not path.is_file():
        raise SagaError(f"{path}: labels file not found; pass --labels CSV with columns path,generator")


def _from_csv(path: Path, taxonomy: Taxonomy, allow_outside: bool = False) -> list[tuple[int, VideoInput]]:
    check_labels_file(path)
    return label_rows(read_labels_text(path), taxonomy, str(path), allow_outside)


def _one_row_per_file(videos: Path, name: str, rows: list[tuple[int, VideoInput]],
                      count: StepCount | None = None) -> set[FileKey]:
    """The real files the rows name; a one-line error when two rows name one file (a link or hard link to it):
    one video under two generators trains both, and listed twice it may land in both train and test."""
    first: dict[FileKey, tuple[int, VideoInput]] = {}
    repeats: list[tuple[int, VideoInput, int, VideoInput]] = []
    count = count or StepCount(None, "")
    for line, item in rows:
        key = file_key(item.absolute(videos))
        count.add()
        if key is not None and key in first:
            repeats.append((line, item, *first[key]))
        elif key is not None:
            first[key] = (line, item)
    count.end()
    if repeats:
        line, item, line0, item0 = repeats[0]
        labelled = "" if item.generator == item0.generator else \
            f", labelled {item.generator} here and {item0.generator} there"
        more = f"; {len(repeats) - 1} more row(s) repeat a file of another row" if len(repeats) > 1 else ""
        raise SagaError(f"{name}:{line}: {shown(item.rel)} is the same file as {shown(item0.rel)} on line {line0} "
                        f"(a link or hard link){labelled}{more}; keep one row per video, with its right generator")
    return set(first)


def parse_labels(text: str, taxonomy: Taxonomy, name: str = "labels.csv",
                 allow_outside: bool = False) -> list[VideoInput]:
    """Parse a labels CSV's text (see `label_rows`) into its videos."""
    return [item for _, item in label_rows(text, taxonomy, name, allow_outside)]


def label_rows(text: str, taxonomy: Taxonomy, name: str = "labels.csv",
               allow_outside: bool = False) -> list[tuple[int, VideoInput]]:
    """Parse a labels CSV's text into (line, video) rows; every problem is a SagaError naming `name:line`.

    `line` is the physical line a row starts on, counting blank lines and the extra lines of
    quoted multi-line fields, so an editor's go-to-line lands on the row.
    """
    if "\x00" in text:
        raise SagaError(f"{name}: contains NUL bytes; not a CSV text file")
    try:
        reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
        fields = [f.strip().lower() for f in next(reader, [])]
        column = next((c for c in LABEL_COLUMNS if c in fields), None)
        if "path" not in fields or column is None:
            raise SagaError(f"{name}: needs a header with 'path' and 'generator' columns (found {fields})")
        seen: dict[str, int] = {}
        items = []
        for line, row in _rows_with_lines(reader, fields):
            raw = row.get("path", "")
            rel = os.path.normpath(raw) if raw else ""
            if not raw:
                raise SagaError(f"{name}:{line}: empty path; every row needs path,generator")
            if not allow_outside and (os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep)):
                raise SagaError(f"{name}:{line}: path {raw!r} must be relative and inside the videos folder "
                                "(pass --allow-outside-paths to allow it)")
            if rel == ".":
                raise SagaError(f"{name}:{line}: path {raw!r} is the videos folder itself, not a video")
            if rel in seen:
                raise SagaError(f"{name}:{line}: {shown(rel)} is listed twice (first on line {seen[rel]}); keep one")
            seen[rel] = line
            if not row.get(column, ""):  # a short row, or an empty cell: not "label '' is not in taxonomy"
                raise SagaError(f"{name}:{line}: {shown(rel)} has no {column}; every row needs path,{column}")
            try:
                generator = taxonomy.canonical(row.get(column, ""))
            except SagaError as exc:
                raise SagaError(f"{name}:{line}: {exc}") from None
            items.append((line, VideoInput(rel, generator)))
    except csv.Error as exc:
        raise SagaError(f"{name}: not a valid CSV ({exc})") from None
    return items


def _rows_with_lines(reader: Any, fields: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Each non-blank row as {column: stripped value} with the line it starts on.

    `reader` is a csv.reader past the header. The start is one past where the previous row
    ended (`reader.line_num`), which stays right after blank lines and multi-line fields,
    unlike counting rows (csv.DictReader also hides blank lines, so it cannot tell).
    """
    ended = reader.line_num
    for row in reader:
        start, ended = ended + 1, reader.line_num
        if row:  # [] is a blank line
            yield start, {f: v.strip() for f, v in zip(fields, row) if f}


def _warn_unlisted(videos: Path, labels: Path, items: list[VideoInput], keys: set[FileKey],
                   count: StepCount | None = None) -> None:
    """A labels.csv found in the videos folder that leaves videos out is probably stale: say so, and name the
    folders that could not be listed (videos it leaves out there could not be counted). A video listed under
    another path (`keys`: the real files it names; a link) is not left out."""
    listed = {item.rel for item in items}
    found, unreadable, found_keys = _all_videos(videos, count)
    unlisted = [rel for rel in found if rel not in listed and found_keys.get(rel) not in keys]
    parts = []
    if unlisted:
        parts.append(f"{len(unlisted)} video(s) in {videos} are not listed in it (e.g. {shown(unlisted[0])}) and are "
                     "skipped; add them to it, or move it away to label by folder")
    if unreadable:
        folder, reason = unreadable[0]
        parts.append(f"{len(unreadable)} folder(s) could not be listed (e.g. {shown(folder)}: {reason}), so the "
                     f"videos there that it leaves out are not counted: make them readable (chmod a+rx "
                     f"{shown(folder)}) and rerun to check")
    if parts:
        warnings.warn(f"{labels}: " + "; ".join(parts), stacklevel=3)


def _all_videos(videos: Path, count: StepCount | None = None
                ) -> tuple[list[str], list[tuple[str, str]], dict[str, FileKey | None]]:
    """Every video path under the folder, as discovery by folder would list it, the folders that could
    not be listed (folder, reason), and the real file of each video in a generator folder."""
    try:
        entries = sorted(videos.iterdir())
    except OSError as exc:  # the listed videos may still open (a folder with x but no r permission)
        return [], [(str(videos), exc.strerror or str(exc))], {}
    loose = [p.name for p in entries if p.suffix.lower() in VIDEO_SUFFIXES]
    walk = Walk(videos, generator_folders(entries), count=count)
    found = loose + [rel for sub in walk.folders for rel in walk.videos_under(sub)]
    walk.count.end()
    return found, walk.unreadable, {**{rel: file_key(videos / rel) for rel in loose}, **walk.keys}


def _listing(videos: Path) -> list[Path]:
    """The videos folder's entries, sorted, or a one-line error when it cannot be listed."""
    try:
        return sorted(videos.iterdir())
    except OSError as exc:
        raise SagaError(unreadable_line(str(videos), exc.strerror or str(exc))) from None


def unreadable_line(folder: str, reason: str) -> str:
    """One line for a folder that cannot be listed: its videos are missing from this pass."""
    return (f"{shown(folder)}: cannot list this folder ({reason}); its videos are skipped: make it readable "
            f"(chmod a+rx {shown(folder)}) and rerun")


def _from_folders(videos: Path, taxonomy: Taxonomy, count: StepCount | None = None) -> Inputs:
    entries = _listing(videos)
    loose = [p.name for p in entries if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    if loose:  # no folder, so no generator: say so rather than skip them silently
        warnings.warn(f"{videos}: {len(loose)} video(s) directly in the folder ({', '.join(loose[:3])}"
                      f"{', ...' if len(loose) > 3 else ''}) are skipped: without a generator folder they have no "
                      "label; move them into one, or pass --labels CSV", stacklevel=3)
    walk = Walk(videos, generator_folders(entries), count=count)
    items, no_videos, unknown, empty = [], [], [], []
    labels: dict[str, str] = {}
    for sub in walk.folders:
        found = walk.videos_under(sub)
        generator = known(taxonomy, sub.name)
        silent = not found and not walk.repeats(sub) and not walk.unlisted(sub)  # unlisted: reported as unreadable
        if generator is None:  # a folder without videos is e.g. GenVideo's CSV index (or all listed elsewhere)
            unknown += [sub] if found else []
            no_videos += [sub.name] if silent else []
            continue
        labels[sub.name] = generator
        items += [VideoInput(rel, generator) for rel in found]
        empty += [(sub, generator)] if silent else []
    walk.count.end()
    if unknown:
        raise unknown_folders_error(videos, unknown, walk.subfolders, taxonomy, beside_generators=bool(labels))
    nested = {name: inside for name, gen in labels.items()
              if (inside := nested_classes(name, gen, walk.subfolders.get(name, []), taxonomy))}
    if nested:
        raise mislabelled_error(videos, nested, labels, taxonomy)
    for sub, generator in empty:  # one line each: the generator silently had no videos
        warnings.warn(empty_line(sub, generator, walk.others.get(sub.name)), stacklevel=3)
    skipped = {sub.name for sub, _ in empty}
    for name, others in walk.others.items():  # videos inside an archive that was not unpacked are missing
        if name in labels and name not in skipped and others.n_archives:
            warnings.warn(archives_line(videos / name, others), stacklevel=3)
    for link, why in walk.skipped:  # one line per link: a silent skip looked like videos lost
        warnings.warn(f"{shown(link)}: linked folder not followed ({why}); its videos are listed once, none is "
                      "lost", stacklevel=3)
    for line in _repeat_lines(videos, walk):
        warnings.warn(line, stacklevel=3)
    if no_videos:
        warnings.warn(f"{videos}: {len(no_videos)} folder(s) without videos ({', '.join(no_videos[:3])}"
                      f"{', ...' if len(no_videos) > 3 else ''}) are not generators of taxonomy "
                      f"'{taxonomy.name}' and are skipped", stacklevel=3)
    return Inputs(items, walk.unreadable)


TWO_LABELS = "one video under two generators trains both, and may land in both train and test"


def _repeat_lines(videos: Path, walk: Walk) -> list[str]:
    """One warning per folder whose videos were listed under an earlier one (see `Walk`), not one per video."""
    lines = [f"{shown(s.folder)}: leads to the same folder as {shown(videos / s.listed)}; its {s.videos} video(s) "
             f"are listed once, under {shown(s.listed)} ({TWO_LABELS}): remove the link you did not mean"
             for s in walk.same]
    for (top, first_top), pairs in walk.copies.items():
        rel, first = pairs[0]
        inside = top == first_top
        where = "another video in it" if inside else f"a video under {shown(videos / first_top)}"
        once = "" if inside else f", under {shown(first_top)}"
        why = "a video listed twice may land in both train and test" if inside else TWO_LABELS
        lines.append(f"{shown(videos / top)}: {len(pairs)} video(s) are the same file as {where} (e.g. {shown(rel)} "
                     f"is {shown(first)}: a link or hard link); each is listed once{once} ({why}): remove the copies "
                     "you did not mean")
    return lines
