"""Finding the videos to extract and their generator labels.

Labels come from a CSV (`path,generator`, paths relative to the videos folder) or,
without one, from the first sub-folder name (matched as `Taxonomy.canonical` does, so
`Show_1` is `Show-1`). Everything that looks like a video
is listed, including things that are not (a folder named x.mp4, a broken link),
so that extraction can record why each one failed instead of silently skipping it; a folder
that cannot be listed is reported (`Inputs.unreadable`), and linked sub-folders are followed.
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


def find_inputs(videos: Path, labels: Path | None, taxonomy: Taxonomy, allow_outside: bool = False) -> Inputs:
    """Videos with canonical generator names, sorted by path (labels are validated here).

    Paths in a labels CSV must stay inside the videos folder: `..` and absolute paths are
    refused unless `allow_outside` (the `--allow-outside-paths` flag) says otherwise.
    """
    if not videos.is_dir():
        raise SagaError(f"{videos}: not a folder of videos; pass --videos DIR")
    found_labels = labels is None and (videos / DEFAULT_LABELS).is_file()
    if found_labels:
        labels = videos / DEFAULT_LABELS
    if labels is not None:
        inputs = Inputs(_from_csv(labels, taxonomy, allow_outside))
        if not inputs.items:
            raise SagaError(f"{labels}: no rows below the header; add one line path,generator per video")
        if found_labels:
            _warn_unlisted(videos, labels, inputs.items)
    else:
        inputs = _from_folders(videos, taxonomy)
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


def _from_csv(path: Path, taxonomy: Taxonomy, allow_outside: bool = False) -> list[VideoInput]:
    if not path.is_file():
        raise SagaError(f"{path}: labels file not found; pass --labels CSV with columns path,generator")
    return parse_labels(read_labels_text(path), taxonomy, str(path), allow_outside)


def parse_labels(text: str, taxonomy: Taxonomy, name: str = "labels.csv",
                 allow_outside: bool = False) -> list[VideoInput]:
    """Parse a labels CSV's text; every problem is a SagaError naming `name:line`.

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
                raise SagaError(f"{name}:{line}: {rel} is listed twice (first on line {seen[rel]}); keep one")
            seen[rel] = line
            try:
                generator = taxonomy.canonical(row.get(column, ""))
            except SagaError as exc:
                raise SagaError(f"{name}:{line}: {exc}") from None
            items.append(VideoInput(rel, generator))
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


def _warn_unlisted(videos: Path, labels: Path, items: list[VideoInput]) -> None:
    """A labels.csv found in the videos folder that leaves videos out is probably stale: say so, and name the
    folders that could not be listed (videos it leaves out there could not be counted)."""
    listed = {item.rel for item in items}
    found, unreadable = _all_videos(videos)
    unlisted = [rel for rel in found if rel not in listed]
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


def _all_videos(videos: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Every video path under the folder, as discovery by folder would list it, and the folders that could
    not be listed (folder, reason)."""
    try:
        entries = sorted(videos.iterdir())
    except OSError as exc:  # the listed videos may still open (a folder with x but no r permission)
        return [], [(str(videos), exc.strerror or str(exc))]
    loose = [p.name for p in entries if p.suffix.lower() in VIDEO_SUFFIXES]
    walk = _Walk(videos, _generator_folders(entries))
    return loose + [rel for sub in walk.folders for rel in walk.videos_under(sub)], walk.unreadable


def _listing(videos: Path) -> list[Path]:
    """The videos folder's entries, sorted, or a one-line error when it cannot be listed."""
    try:
        return sorted(videos.iterdir())
    except OSError as exc:
        raise SagaError(unreadable_line(str(videos), exc.strerror or str(exc))) from None


def _generator_folders(entries: list[Path]) -> list[Path]:
    """The sub-folders that may name a generator: not hidden, not named like a video."""
    return [p for p in entries if p.is_dir() and not p.name.startswith(".") and p.suffix.lower() not in VIDEO_SUFFIXES]


def unreadable_line(folder: str, reason: str) -> str:
    """One line for a folder that cannot be listed: its videos are missing from this pass."""
    return (f"{shown(folder)}: cannot list this folder ({reason}); its videos are skipped: make it readable "
            f"(chmod a+rx {shown(folder)}) and rerun")


class _Walk:
    """One discovery's walk of the generator folders, every video listed once.

    Linked sub-folders are followed, as a linked generator folder always was. A folder is not entered twice
    (a link loop, two links to one place), nor through a link into a generator folder (its videos are listed
    there, under their own generator). Such a link is kept in `skipped` (link, why) for one warning each.
    Folders that cannot be listed are kept in `unreadable` (folder, reason): os.walk skips them silently by default.
    """

    def __init__(self, root: Path, folders: list[Path]) -> None:
        self.root, self.folders = root, folders
        self.owned = {os.path.realpath(f): f.name for f in folders}  # real path -> the generator folder's name
        self.seen = {os.path.realpath(root): ".", **self.owned}  # real path -> where it was listed (under root)
        self.unreadable: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []  # (linked folder, why it was not walked): one per link

    def videos_under(self, folder: Path) -> list[str]:
        """Paths (relative to the root) of everything named like a video below `folder`, sorted."""
        found: list[str] = []
        top = os.path.realpath(folder)
        for dirpath, dirnames, filenames in os.walk(folder, onerror=self._note, followlinks=True):
            here = Path(dirpath)
            for name in [*filenames, *dirnames]:
                if Path(name).suffix.lower() in VIDEO_SUFFIXES:
                    found.append(str((here / name).relative_to(self.root)))
            dirnames[:] = [d for d in sorted(dirnames) if Path(d).suffix.lower() not in VIDEO_SUFFIXES
                           and self._enter(here / d, os.path.join(top, (here / d).relative_to(folder)))]
        return sorted(found)

    def _enter(self, path: Path, natural: str) -> bool:
        """Whether to walk `path`, whose real path is `natural` unless a link leads there; a folder not walked
        is noted in `skipped` (its link, not each file below it: those are listed where it is walked)."""
        real = os.path.realpath(path)
        listed = self.seen.get(real) or (self._listed_in_generator_folder(real) if real != natural else None)
        if listed is None:
            self.seen[real] = str(path.relative_to(self.root))
            return True
        self.skipped.append((str(path), self._why_skipped(path, real, listed)))
        return False

    def _listed_in_generator_folder(self, real: str) -> str | None:
        """Where `real` is listed when it lies in a generator folder (its path under the root), else None."""
        for owned, name in self.owned.items():
            if _holds(owned, real):
                return os.path.normpath(os.path.join(name, os.path.relpath(real, owned)))
        return None

    def _why_skipped(self, path: Path, real: str, listed: str) -> str:
        """A loop (the link leads back to a folder that holds it, or to the videos folder), or where it is listed."""
        if _holds(real, os.path.realpath(path.parent)) or _holds(real, os.path.realpath(self.root)):
            return f"a link loop: it leads back to {shown(real)}"
        return f"already listed under {shown(listed)}"

    def _note(self, exc: OSError) -> None:
        self.unreadable.append((str(exc.filename), exc.strerror or str(exc)))


def _holds(folder: str, path: str) -> bool:
    """Whether real path `path` is `folder` or lies below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _from_folders(videos: Path, taxonomy: Taxonomy) -> Inputs:
    entries = _listing(videos)
    loose = [p.name for p in entries if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    if loose:  # no folder, so no generator: say so rather than skip them silently
        warnings.warn(f"{videos}: {len(loose)} video(s) directly in the folder ({', '.join(loose[:3])}"
                      f"{', ...' if len(loose) > 3 else ''}) are skipped: without a generator folder they have no "
                      "label; move them into one, or pass --labels CSV", stacklevel=3)
    items, no_videos = [], []
    walk = _Walk(videos, _generator_folders(entries))
    for sub in walk.folders:
        found = walk.videos_under(sub)
        try:
            generator = taxonomy.canonical(sub.name)
        except SagaError:
            if not found:  # e.g. GenVideo's CSV index folder: nothing to label
                no_videos.append(sub.name)
                continue
            raise SagaError(
                f"{sub}: folder name {sub.name!r} is not a generator of taxonomy '{taxonomy.name}'; "
                "rename it, pass --labels CSV, or pass --taxonomy FILE"
            ) from None
        items += [VideoInput(rel, generator) for rel in found]
    for link, why in walk.skipped:  # one line per link: a silent skip looked like videos lost
        warnings.warn(f"{shown(link)}: linked folder not followed ({why}); its videos are listed once, none is "
                      "lost", stacklevel=3)
    if no_videos:
        warnings.warn(f"{videos}: {len(no_videos)} folder(s) without videos ({', '.join(no_videos[:3])}"
                      f"{', ...' if len(no_videos) > 3 else ''}) are not generators of taxonomy "
                      f"'{taxonomy.name}' and are skipped", stacklevel=3)
    return Inputs(items, walk.unreadable)
