"""The cheap seal check of every reader of a cache: train, attribute, evaluate, probe and `saga cache info`.

Why: `saga cache verify` hashes every record, which a training run cannot afford; yet a run must not
silently train on a cache whose sealed manifests were edited after sealing (labels or splits changed:
wrong targets, test videos in train) or that lost a sealed part (its videos silently left out). A seal
records each part's manifest line count and blake2b (saga.cache.seal); the record index computes the
manifests' digests while it parses them and keeps them in its sidecar (keyed on the manifest's size, mtime,
inode and ctime: saga.cache.columns), so checking an unchanged cache costs no extra read. A mismatch is
hashed again from the file before it is reported (an index read while the part was being sealed). The features themselves are
checked on every read (crc32c / blake2b per record, saga.cache.reader).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from saga.cache import prune
from saga.cache.manifest import manifest_digest
from saga.cache.seal import MANIFEST, PARTS_LOG, SEAL, log_entries, seal_entry
from saga.errors import SagaError

if TYPE_CHECKING:
    from saga.cache.store import FeatureCache


@dataclass(frozen=True)
class SealState:
    """Each part of a cache by the state of its seal (part names, sorted)."""

    parts: int  # parts on disk
    unsealed: tuple[str, ...]  # no seal at all: an older saga, an extraction killed or still running
    changed: tuple[str, ...]  # manifest differs from its seal: truncated or edited after sealing
    damaged: tuple[str, ...]  # seal.json unreadable and no parts.jsonl line: its manifest cannot be checked
    missing: tuple[str, ...]  # sealed (parts.jsonl) but gone from disk, not retired
    pruning: tuple[str, ...]  # a `saga cache prune` was interrupted after its commit point

    @property
    def sealed(self) -> int:
        """Parts on disk whose manifest matches their seal."""
        return self.parts - len(self.unsealed) - len(self.changed) - len(self.damaged)

    def text(self) -> str:
        """One line for `saga cache info`."""
        line = f"{self.sealed} of {self.parts} part(s) sealed and unchanged"
        for names, what in ((self.unsealed, "never sealed"), (self.pruning, "with an interrupted prune"),
                            (self.changed, "CHANGED since sealing"), (self.damaged, f"with a damaged {SEAL}"),
                            (self.missing, "sealed but MISSING")):
            if names:
                line += f"; {len(names)} {what} ({_names(names)})"
        return line

    def as_dict(self) -> dict[str, object]:
        return {"parts": self.parts, "sealed": self.sealed, "unsealed": list(self.unsealed),
                "changed": list(self.changed), "damaged": list(self.damaged), "missing": list(self.missing),
                "pruning": list(self.pruning)}


def seal_state(cache: "FeatureCache") -> SealState:
    """Every part against its seal (its last parts.jsonl line, else its seal.json), using the index's digests."""
    logged = log_entries(cache.root)
    names = cache.part_names()
    digests = cache.index().digests
    unsealed, changed, damaged, pruning = [], [], [], []
    for name in names:
        entry = logged.get(name)
        if entry is None and (cache.root / "parts" / name / SEAL).exists():
            entry = seal_entry(cache.root, name)
            if entry is None:
                damaged.append(name)
                continue
        if entry is None:
            unsealed.append(name)
            continue
        sealed = (entry.get("lines"), entry.get("digest"))
        if digests.get(name) == sealed or manifest_digest(cache.root / "parts" / name / MANIFEST) == sealed:
            continue
        (pruning if prune.interrupted(cache.root, name, entry) else changed).append(name)
    missing = sorted(set(logged) - set(names))
    return SealState(len(names), *map(tuple, (unsealed, changed, damaged, missing, pruning)))


def seal_errors(cache: "FeatureCache", state: SealState) -> list[str]:
    """One line per part that makes the cache unsafe to train or evaluate on, each naming the fix."""
    root, verify = cache.root, f"run `saga cache verify {cache.root}`"
    lines = [f"{root}: part {name}'s {MANIFEST} changed since it was sealed (truncated, or its records, labels or "
             f"splits edited), so its videos would be used as they are now; {verify}, then restore the file or "
             "re-extract into a new cache" for name in state.changed]
    lines += [f"{root}: part {name}'s {SEAL} is damaged and {PARTS_LOG} has no line for it, so its manifest cannot "
              f"be checked; {verify}, then restore the file or re-extract into a new cache" for name in state.damaged]
    logged = log_entries(root) if state.missing else {}
    lines += [f"{root}: part {name} is missing (sealed with {logged[name].get('lines')} records), so its videos would "
              f"be silently left out; {verify}: it says how to restore the part or re-extract and retire it"
              for name in state.missing]
    return lines


def seal_warnings(cache: "FeatureCache", state: SealState) -> list[str]:
    """One line per interrupted prune (its dropped records are still read until it is finished)."""
    return [f"{cache.root}: part {name}: a `saga cache prune` was interrupted, so the records it dropped are still "
            f"read; rerun it (or `saga cache verify --seal {cache.root}`) to finish it" for name in state.pruning]


def unsealed_warning(cache: "FeatureCache", state: SealState) -> str | None:
    """The line about parts never sealed (None: there are none): they load, but edits to them go unnoticed."""
    if not state.unsealed:
        return None
    return (f"{cache.root}: {len(state.unsealed)} of {state.parts} part(s) are not sealed (made by an older saga, or "
            "an extraction killed or still running), so edits to them cannot be detected; check and seal them with "
            f"`saga cache verify --seal {cache.root}`")


def check_seals(cache: "FeatureCache") -> SealState:
    """The cache's seal state; a one-line SagaError when a sealed part was edited, damaged or lost."""
    state = seal_state(cache)
    errors = seal_errors(cache, state)
    if errors:
        more = f" (and {len(errors) - 1} more problem(s) of this kind)" if len(errors) > 1 else ""
        raise SagaError(errors[0] + more)
    return state


def _names(names: tuple[str, ...], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f", … ({len(names) - shown} more)" if len(names) > shown else "")
