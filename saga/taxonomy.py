"""The five attribution levels as data: generator -> task, SD backbone, team.

A taxonomy is an editable TOML file (see `saga/data/*.toml`) so the inferred
parts of GenVideo's labels can be corrected without touching code.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from saga.errors import SagaError
from saga.fileio import loads_toml

LEVELS: tuple[str, ...] = ("BIN-L", "TASK-L", "SD-L", "TEAM-L", "GEN-L")
REAL = "real"
FAKE = "fake"
TASKS = ("T2V", "I2V")
NO_SD = "none"
BUILTIN = ("genvideo", "synth")
_IGNORED_IN_NAMES = re.compile(r"[\s_-]+")


def name_key(name: str) -> str:
    """How a label is matched: case, spaces, '-' and '_' are ignored (GenVideo's folders spell
    `Show_1`, `Kinetics_400`, `Youku-mPLUG`; users write `Open-Sora`, `Gen-2`, `Morph Studio`)."""
    return _IGNORED_IN_NAMES.sub("", name).lower()


@dataclass(frozen=True)
class Generator:
    """One video source and the attribute that each coarser level groups it by."""

    name: str
    task: str
    sd: str | None
    team: str
    inferred: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


@dataclass
class Taxonomy:
    """Maps a generator name (or a real-source alias) to its class at every level."""

    name: str
    generators: dict[str, Generator]
    real_aliases: tuple[str, ...] = (REAL,)
    description: str = ""
    _lookup: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._lookup = _lookup_table(self.generators, self.real_aliases, f"taxonomy '{self.name}'")

    # -- loading ---------------------------------------------------------------
    @classmethod
    def load(cls, source: str | Path | None = None) -> "Taxonomy":
        """Load a built-in taxonomy by name ("genvideo", "synth") or a TOML file."""
        if source is None:
            source = "genvideo"
        if str(source) in BUILTIN:
            text = resources.files("saga.data").joinpath(f"{source}.toml").read_text()
            return cls.from_toml(text, origin=f"built-in '{source}'")
        path = Path(source)
        if not path.is_file():
            raise SagaError(f"{path}: taxonomy file not found; pass a TOML file or one of {', '.join(BUILTIN)}")
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise SagaError(f"{path}: not UTF-8 text (byte {exc.start}); save the taxonomy as UTF-8") from None
        except OSError as exc:
            raise SagaError(f"{path}: cannot read taxonomy file ({exc.strerror or exc})") from None
        return cls.from_toml(text, origin=str(path))

    @classmethod
    def from_toml(cls, text: str, origin: str = "<taxonomy>") -> "Taxonomy":
        try:
            data = loads_toml(text)
        except tomllib.TOMLDecodeError as exc:  # "nested too deeply" too
            raise SagaError(f"{origin}: not valid TOML ({exc}); fix the file's syntax") from None
        return cls.from_dict(data, origin)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "<taxonomy>") -> "Taxonomy":
        if not isinstance(data, dict):
            raise SagaError(f"{origin}: not a taxonomy table")
        gens = data.get("generators")
        if not isinstance(gens, dict) or not gens:
            raise SagaError(f"{origin}: no [generators.NAME] tables; add at least one generator")
        parsed = {name: _parse_generator(name, spec, origin) for name, spec in gens.items()}
        real = data.get("real", [REAL])
        if not isinstance(real, list) or not all(isinstance(a, str) and name_key(a) for a in real):
            raise SagaError(f"{origin}: 'real' must be a list of names, e.g. real = [\"real\", \"youtube\"] "
                            f"(got {real!r})")
        aliases = tuple(a.strip() for a in real)
        if REAL not in aliases:
            aliases = (REAL, *aliases)
        _lookup_table(parsed, aliases, origin)  # refuses clashes, naming the file
        for attr in ("sd", "team"):
            _check_spellings(origin, attr, [getattr(g, attr) for g in parsed.values() if getattr(g, attr)])
        return cls(str(data.get("name", origin)), parsed, aliases, str(data.get("description", "")))

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (stored with every cache and run, so they are self-contained)."""
        gens = {g.name: _generator_dict(g) for g in self.generators.values()}
        return {"name": self.name, "description": self.description, "real": list(self.real_aliases), "generators": gens}

    # -- labels ----------------------------------------------------------------
    def canonical(self, label: str) -> str:
        """The generator name for a label or alias (see `name_key`), REAL for real sources."""
        try:
            return self._lookup[name_key(label)]
        except KeyError:
            raise SagaError(
                f"label {label!r} is not in taxonomy '{self.name}'{self.did_you_mean(label)}; add it to the "
                f"taxonomy file or fix the labels (known: {', '.join(sorted(self.generators))}, {REAL})"
            ) from None

    def closest(self, label: str) -> str | None:
        """The known name a misspelt label most likely means (matched as `name_key` matches), if any."""
        close = difflib.get_close_matches(name_key(label), list(self._lookup), n=1, cutoff=0.75)
        return self._lookup[close[0]] if close else None

    def did_you_mean(self, label: str) -> str:
        """' (did you mean NAME?)' for a typo, so one letter wrong among 20 names is fixed at a glance."""
        guess = self.closest(label)
        return f" (did you mean {guess!r}?)" if guess else ""

    def labels(self, label: str) -> dict[str, str | None]:
        """The class at every level; SD-L is None for generators without an SD backbone."""
        name = self.canonical(label)
        if name == REAL:
            return {level: REAL for level in LEVELS}
        g = self.generators[name]
        return {"BIN-L": FAKE, "TASK-L": g.task, "SD-L": g.sd, "TEAM-L": g.team, "GEN-L": g.name}

    def classes(self, level: str) -> list[str]:
        """The classes of a level: real first, then the others in file order."""
        check_level(level)
        out = [REAL]
        for g in self.generators.values():
            cls = self.labels(g.name)[level]
            if cls is not None and cls not in out:
                out.append(cls)
        return out

    def parent(self, level: str, cls: str, coarser: str) -> str | None:
        """The class at a coarser level implied by `cls` at `level` (None if ambiguous)."""
        check_level(level), check_level(coarser)
        if cls == REAL:
            return REAL
        found = {self.labels(g)[coarser] for g in self.generators if self.labels(g)[level] == cls}
        return found.pop() if len(found) == 1 else None

    def counts(self, labels: Iterable[str] | None = None) -> dict[str, Counter]:
        """Per level, how many generators (or given labels) fall in each class."""
        items = list(labels) if labels is not None else [REAL, *self.generators]
        out: dict[str, Counter] = {level: Counter() for level in LEVELS}
        for item in items:
            for level, cls in self.labels(item).items():
                if cls is not None:
                    out[level][cls] += 1
        return out


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise SagaError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
    return level


def _generator_dict(g: Generator) -> dict[str, Any]:
    """A generator's TOML table; `aliases` only when it has some, so older caches' taxonomies compare equal."""
    out: dict[str, Any] = {"task": g.task, "sd": g.sd or NO_SD, "team": g.team, "inferred": list(g.inferred)}
    if g.aliases:
        out["aliases"] = list(g.aliases)
    return out


def _lookup_table(generators: dict[str, Generator], real_aliases: Iterable[str], where: str) -> dict[str, str]:
    """name_key -> generator (or REAL) for every name and alias; two spellings of one key must agree."""
    table: dict[str, tuple[str, str]] = {}  # key -> (target, the spelling that claimed it)
    spellings = [(g.name, g.name) for g in generators.values()]
    spellings += [(alias, g.name) for g in generators.values() for alias in g.aliases]
    spellings += [(alias, REAL) for alias in real_aliases]
    for spelling, target in spellings:
        key = name_key(spelling)
        claimed = table.setdefault(key, (target, spelling))
        if claimed[0] != target:
            raise SagaError(f"{where}: {claimed[1]!r} and {spelling!r} are the same name once case, spaces, "
                            "'-' and '_' are ignored; rename one")
    return {key: target for key, (target, _) in table.items()}


def _check_spellings(origin: str, attr: str, values: list[str]) -> None:
    """One SD-L / TEAM-L class per backbone or team: 'SD 2.1' and 'sd 2.1' would be two classes, silently."""
    seen: dict[str, str] = {}
    for value in values:
        first = seen.setdefault(name_key(value), value)
        if first != value:
            raise SagaError(f"{origin}: {attr} {first!r} and {value!r} differ only in case, spaces, '-' or '_', so they "
                            "would be two classes; spell them the same")
        if name_key(value) == FAKE:
            raise SagaError(f"{origin}: {attr} {value!r}: '{FAKE}' is reserved for the BIN-L class")


def _parse_aliases(spec: dict[str, Any], where: str) -> tuple[str, ...]:
    aliases = spec.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and name_key(a) for a in aliases):
        raise SagaError(f"{where}: aliases must be a list of names, e.g. aliases = [\"Open-Sora\"] (got {aliases!r})")
    return tuple(a.strip() for a in aliases)


def _parse_generator(name: str, spec: Any, origin: str) -> Generator:
    where = f"{origin}: generator {name!r}"
    if name != name.strip():
        raise SagaError(f"{where}: the name has surrounding spaces; write it as {name.strip()!r}")
    if not name_key(name):
        raise SagaError(f"{where}: the name has no letters or digits; give it a real name")
    if not isinstance(spec, dict):
        raise SagaError(f"{where}: expected a table with task, sd and team")
    missing = [k for k in ("task", "sd", "team") if k not in spec]
    if missing:
        raise SagaError(f"{where}: missing {', '.join(missing)}; add them to its table")
    task = str(spec["task"])
    if task not in TASKS:
        raise SagaError(f"{where}: task {task!r} is not one of {', '.join(TASKS)}")
    sd = str(spec["sd"]).strip()
    team = str(spec["team"]).strip()
    if not team:
        raise SagaError(f"{where}: empty team")
    if not sd:
        raise SagaError(f'{where}: empty sd; write "{NO_SD}" for no SD backbone')
    aliases = _parse_aliases(spec, where)
    if {name_key(n) for n in (name, *aliases)} & {REAL, FAKE} or team.lower() == REAL or sd.lower() == REAL:
        raise SagaError(f"{where}: '{REAL}' and '{FAKE}' are reserved for the BIN-L classes")
    inferred = spec.get("inferred", ())
    if not isinstance(inferred, (list, tuple)):
        raise SagaError(f"{where}: inferred must be a list of field names")
    inferred = tuple(inferred)
    bad = [k for k in inferred if k not in ("task", "sd", "team")]
    if bad:
        raise SagaError(f"{where}: inferred lists unknown field {bad[0]!r}")
    return Generator(name, task, None if sd.lower() == NO_SD else sd, team, inferred, aliases)
