"""Walking the generator folders of a videos folder: every real video file listed once, under one generator.

Linked sub-folders are followed, as a linked generator folder always was. A folder is not entered twice
(a link loop, two links to one place), nor through a link into a generator folder (its videos are listed
there, under their own generator), nor through a link to a folder that holds the videos folder (it would list
videos from outside it). Generator folders are walked in sorted order, and a real file (device and
inode, links followed) is listed under the first one that reaches it: two generator folders linked to one
place, one linked into the other, or one video linked or hard-linked into two of them would otherwise put one
video under two labels (and possibly in both train and test).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from saga.cache.manifest import VIDEO_SUFFIXES
from saga.errors import shown
from saga.progress import StepCount

FileKey = tuple[int, int]  # (st_dev, st_ino): the real file behind every link and hard link to it


def file_key(path: str | Path) -> FileKey | None:
    """The real file `path` names, links followed; None when it cannot be stat'ed (a broken link: it is
    listed, and extraction records why it failed)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def generator_folders(entries: list[Path]) -> list[Path]:
    """The sub-folders that may name a generator: not hidden, not named like a video."""
    return [p for p in entries if p.is_dir() and not p.name.startswith(".") and p.suffix.lower() not in VIDEO_SUFFIXES]


@dataclass(frozen=True)
class SameFolder:
    """A folder not walked because it is (a link to) a folder a generator folder before it listed."""

    folder: str  # the path as found under the videos folder
    listed: str  # where its videos are listed (relative to the videos folder)
    videos: int  # how many videos are listed there (once, not twice)


@dataclass
class OtherFiles:
    """The files below a generator folder that are not videos: counted, the first few named, archives apart
    (an archive that was not unpacked hides its videos: `saga.pipeline.layout` warns about it)."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    archives: list[str] = field(default_factory=list)  # the first few archives or archive parts
    n_archives: int = 0

    def add(self, rel: str) -> None:
        self.count += 1
        if len(self.examples) < 3:
            self.examples.append(rel)
        if is_archive(rel):
            self.n_archives += 1
            if len(self.archives) < 3:
                self.archives.append(rel)


ARCHIVE_SUFFIXES = {".tar", ".gz", ".tgz", ".zip", ".7z", ".rar", ".bz2", ".xz", ".zst"}


def is_archive(name: str) -> bool:
    """An archive or a part of a split one: x.tar.gz, x.zip, x.tar.gz.part-aa, x.7z.001, x.z01."""
    suffixes = [s.lower() for s in Path(name).suffixes]
    last = suffixes[-1] if suffixes else ""
    return bool(set(suffixes) & ARCHIVE_SUFFIXES) or last.startswith(".part") or (
        len(last) == 4 and last[1] in "zr" and last[2:].isdigit())


class Walk:
    """One discovery's walk of the generator folders (see the module docstring).

    Kept for one warning each: `skipped` (link, why) for a linked folder not followed, `same` for a folder
    that is another one already walked, `copies` {(generator folder, the one listing them): [(rel, listed
    rel)]} for video files reached twice. Folders that cannot be listed are kept in `unreadable` (folder,
    reason): os.walk skips them silently by default. Per generator folder (by name), `subfolders` keeps the
    names of its own sub-folders and `others` its files that are not videos (for `saga.pipeline.layout`).
    `count` counts every file gone through (a video once it is stat'ed), for the scan's status line.
    """

    def __init__(self, root: Path, folders: list[Path], walk_video_named: bool = False,
                 count: StepCount | None = None) -> None:
        self.root, self.folders = root, folders
        self.count = count or StepCount(None, "")
        # a sub-folder named like a video (x.mp4/): listed, so extraction records why it failed; or walked
        # (`saga predict`, which predicts files only)
        self.walk_video_named = walk_video_named
        self.owned: dict[str, str] = {}  # real path -> the (first) generator folder's name
        for f in folders:
            self.owned.setdefault(os.path.realpath(f), f.name)
        self.seen = {os.path.realpath(root): "."}  # real path of each folder walked -> where (under root)
        self.unreadable: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []  # (linked folder, why it was not walked): one per link
        self.same: list[SameFolder] = []
        self.copies: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.keys: dict[str, FileKey | None] = {}  # each listed video -> its real file
        self._first: dict[FileKey, str] = {}  # real file -> the path it is listed under
        self.subfolders: dict[str, list[str]] = {}
        self.others: dict[str, OtherFiles] = {}

    def videos_under(self, folder: Path) -> list[str]:
        """Paths (relative to the root) of everything named like a video below `folder` not listed before, sorted."""
        top = os.path.realpath(folder)
        if top in self.seen:  # a link to a folder walked already (two generator folders linked to one place)
            self._note_same(folder, self.seen[top])
            return []
        if _holds(top, os.path.realpath(self.root)):  # a generator folder linked to a folder above the root
            self.skipped.append((str(folder), self._why_skipped(folder, top, ".")))
            return []
        self.seen[top] = folder.name
        return self._walked(folder, top)

    def every_video(self) -> list[str]:
        """Everything named like a video below the root itself, as `videos_under` walks a generator folder:
        `saga predict`'s walk of a folder the user names (no generators: every sub-folder is walked)."""
        return self._walked(self.root, os.path.realpath(self.root))

    def _walked(self, folder: Path, top: str) -> list[str]:
        """The videos below `folder` (real path `top`, marked seen) not listed before, sorted."""
        found: list[str] = []
        others = self.others.setdefault(folder.name, OtherFiles())
        for dirpath, dirnames, filenames in os.walk(folder, onerror=self._note, followlinks=True):
            here = Path(dirpath)
            if here == folder:
                self.subfolders[folder.name] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames if self.walk_video_named else [*filenames, *dirnames]:
                if Path(name).suffix.lower() in VIDEO_SUFFIXES:
                    found.append(str((here / name).relative_to(self.root)))
            for name in sorted(filenames):
                if Path(name).suffix.lower() not in VIDEO_SUFFIXES:
                    others.add(str((here / name).relative_to(self.root)))
                    self.count.add()
            dirnames[:] = [d for d in sorted(dirnames)
                           if (self.walk_video_named or Path(d).suffix.lower() not in VIDEO_SUFFIXES)
                           and self._enter(here / d, os.path.join(top, (here / d).relative_to(folder)))]
        return [rel for rel in sorted(found) if self._list_once(rel)]

    def repeats(self, folder: Path) -> bool:
        """Whether videos reached through generator folder `folder` were listed under another path instead (or it
        was not walked: a link to a folder above the root)."""
        return any(_top(str(Path(s.folder).relative_to(self.root))) == folder.name for s in self.same) or \
            any(top == folder.name for top, _ in self.copies) or any(link == str(folder) for link, _ in self.skipped)

    def unlisted(self, folder: Path) -> bool:
        """Whether `folder`, or a folder inside it, could not be listed: it is reported as unreadable, and calling
        it empty (or without videos) too gave a false reason and a fix that fixes nothing."""
        top = os.path.join(str(folder), "")
        return any(path == str(folder) or path.startswith(top) for path, _ in self.unreadable)

    def _list_once(self, rel: str) -> bool:
        """Whether `rel` is listed: not when its real file is listed already (a link or hard link to it)."""
        key = file_key(self.root / rel)
        self.count.add()
        first = self._first.get(key) if key is not None else None
        if first is not None:
            self.copies.setdefault((_top(rel), _top(first)), []).append((rel, first))
            return False
        if key is not None:
            self._first[key] = rel
        self.keys[rel] = key
        return True

    def _note_same(self, folder: Path, listed: str) -> None:
        inside = listed.rstrip(os.sep) + os.sep
        self.same.append(SameFolder(str(folder), listed, sum(rel.startswith(inside) for rel in self.keys)))

    def _enter(self, path: Path, natural: str) -> bool:
        """Whether to walk `path`, whose real path is `natural` unless a link leads there; a folder not walked
        is noted in `skipped` or `same` (the folder, not each file below it: those are listed where it is walked)."""
        real = os.path.realpath(path)
        if real == natural and real in self.seen:  # a generator folder before this one links here
            self._note_same(path, self.seen[real])
            return False
        listed = self.seen.get(real) or (self._listed_in_generator_folder(real) if real != natural else None)
        if listed is None and real != natural and _holds(real, os.path.realpath(self.root)):
            listed = "."  # a link to a folder that holds the videos folder: walking it lists videos outside it
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


def _top(rel: str) -> str:
    """The generator folder a path relative to the videos folder lies in."""
    return rel.split(os.sep, 1)[0]


def _holds(folder: str, path: str) -> bool:
    """Whether real path `path` is `folder` or lies below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
