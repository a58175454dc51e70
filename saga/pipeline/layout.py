"""What the top-level folders of a videos folder say about its layout, each problem in one line.

Labelling by folder takes a video's generator from the first folder below `--videos`. Three layouts
break that rule without a bad name in sight, and each gets the fix that keeps the labels right:

- a folder above the generator folders (`--videos /data` for `/data/GenVideo`, or a `train/` and
  `test/` or `real/` and `fake/` level): its name is no generator, and renaming it to one would label
  every video below it wrong, so the error says where the generator folders are;
- a generator folder holding folders named after other classes (`real/ZeroScope/`): every video below
  it would take the outer folder's label;
- a generator folder without videos (empty, or archives not unpacked): its generator silently got none.

Every unknown folder is named in the one error (they used to come one rerun at a time).
"""

from __future__ import annotations

from pathlib import Path

from saga.errors import SagaError, shown
from saga.pipeline.walk import OtherFiles
from saga.taxonomy import Taxonomy


def known(taxonomy: Taxonomy, name: str) -> str | None:
    """The generator (or real) a folder name stands for, None when the taxonomy has no such name."""
    try:
        return taxonomy.canonical(name)
    except SagaError:
        return None


def _names(names: list[str], most: int = 4) -> str:
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


def unknown_folders_error(videos: Path, unknown: list[Path], subfolders: dict[str, list[str]],
                          taxonomy: Taxonomy, beside_generators: bool) -> SagaError:
    """One error naming every top-level folder with videos whose name the taxonomy lacks.

    `subfolders`: each folder's own sub-folders; `beside_generators`: whether generator folders sit beside
    the unknown ones (then `--videos` is not simply one level too high)."""
    inner = {f.name: [s for s in subfolders.get(f.name, []) if known(taxonomy, s)] for f in unknown}
    above = [f for f in unknown if inner[f.name]]
    plain = [f for f in unknown if not inner[f.name]]
    parts = []
    if above:
        parts.append(_above_line(videos, above, inner, taxonomy, alone=not plain and not beside_generators))
    if plain:
        parts.append(_plain_line(videos, plain, taxonomy))
    return SagaError("; ".join(parts))


def _above_line(videos: Path, above: list[Path], inner: dict[str, list[str]], taxonomy: Taxonomy,
                alone: bool) -> str:
    """Folders that hold generator folders: a level between --videos and the generators."""
    first = above[0]
    if alone and len(above) == 1:
        return (f"{shown(first)}: folder name {first.name!r} is not a generator of taxonomy '{taxonomy.name}' but "
                f"holds generator folders ({_names(inner[first.name])}): --videos points one level above them; "
                f"pass --videos {shown(first)}")
    held = "; ".join(f"{f.name}: {_names(inner[f.name], 3)}" for f in above[:4])
    example = inner[first.name][0]
    return (f"{shown(videos)}: {len(above)} folder(s) are not generators of taxonomy '{taxonomy.name}' but hold "
            f"generator folders ({held}{'; ...' if len(above) > 4 else ''}), a level such as train/test or "
            "real/fake above the generators (renaming them would mislabel every video below): label every video "
            f"by the folder below with --labels CSV (rows such as {shown(first.name)}/{shown(example)}/CLIP.mp4,"
            f"{known(taxonomy, example)}; docs/real-data.md shows how to write it), or pass --videos "
            f"{shown(first)} to extract only the videos below it")


def _plain_line(videos: Path, plain: list[Path], taxonomy: Taxonomy) -> str:
    if len(plain) == 1:
        f = plain[0]
        return (f"{shown(f)}: folder name {f.name!r} is not a generator of taxonomy '{taxonomy.name}'"
                f"{taxonomy.did_you_mean(f.name)}; rename it to "
                "its generator's name (or add that spelling to the generator's aliases in a copy of the taxonomy), "
                "move it out of --videos if it holds no generator's videos, pass --labels CSV, or pass --taxonomy FILE")
    return (f"{shown(videos)}: {len(plain)} folders are not generators of taxonomy '{taxonomy.name}' "
            f"({_names([shown(f.name) for f in plain], 8)}){_guesses(plain, taxonomy)}; rename each to its generator's name (or add that "
            "spelling to the generator's aliases in a copy of the taxonomy), move those that hold no generator's "
            "videos out of --videos, pass --labels CSV, or pass --taxonomy FILE")


def _guesses(folders: list[Path], taxonomy: Taxonomy) -> str:
    """The closest generator name of each misspelt folder, so the rename is obvious."""
    pairs = [(shown(f.name), taxonomy.closest(f.name)) for f in folders[:8]]
    said = [f"{name} -> {guess!r}" for name, guess in pairs if guess]
    return f" (did you mean: {', '.join(said)}?)" if said else ""


def mislabelled_error(videos: Path, nested: dict[str, list[str]], labels: dict[str, str],
                      taxonomy: Taxonomy) -> SagaError:
    """Generator folders holding folders named after other classes: `nested` {folder: those sub-folders}."""
    name, inside = next(iter(nested.items()))
    more = f"; {len(nested) - 1} more folder(s) likewise" if len(nested) > 1 else ""
    return SagaError(f"{shown(videos / name)}: holds folders named after other classes of taxonomy "
                     f"'{taxonomy.name}' ({_names([shown(s) for s in inside])}), yet every video below it is "
                     f"labelled {labels[name]} by its folder's name{more}: move them out beside it, or pass "
                     "--labels CSV")


def nested_classes(folder: str, generator: str, subfolders: list[str], taxonomy: Taxonomy) -> list[str]:
    """The sub-folders of a generator folder whose names are another generator (or real)."""
    return [s for s in subfolders if known(taxonomy, s) not in (None, generator)]


def empty_line(folder: Path, generator: str, others: OtherFiles | None) -> str:
    """A generator folder without videos, naming what it holds instead."""
    if others is None or not others.count:
        return (f"{shown(folder)}: generator folder holds no videos (it is empty), so {generator} gets none from "
                "it; put its videos there and rerun, or remove the folder")
    if others.n_archives:
        return (f"{shown(folder)}: generator folder holds no videos, only {others.count} other file(s) "
                f"({others.n_archives} archive(s) or archive part(s): {_names([shown(a) for a in others.archives])}), "
                f"so {generator} gets none from it; unpack them there and rerun")
    return (f"{shown(folder)}: generator folder holds no videos, only {others.count} other file(s) "
            f"({_names([shown(e) for e in others.examples], 3)}), so {generator} gets none from it; put its videos "
            "there and rerun, or remove the folder")


def archives_line(folder: Path, others: OtherFiles) -> str:
    """Archives beside a generator folder's videos: the videos inside them are not read."""
    return (f"{shown(folder)}: {others.n_archives} archive file(s) or archive part(s) beside its videos are not read "
            f"({_names([shown(a) for a in others.archives], 3)}); unpack them there and rerun to add their videos")
