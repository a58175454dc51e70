"""Run folders (docs/run-folder.md): one run's folder, created, resumed, or found finished and reused.

A folder is reopened only for the very run it holds (same settings, same cache), so a
typo in --out never overwrites finished results; a cache that changed under an unfinished
run is refused unless the caller explicitly continues it (`accept_changed_cache`), and under a
finished run it is refused always (saga ablate --resume alone keeps such a run as it is).
Every write is atomic (`saga.fileio`); a full disk or a read-only folder is one line
naming the folder, with the last committed checkpoint untouched.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from saga.cache.fraction import LEGACY as LEGACY_DRAW
from saga.errors import SagaError
from saga.fileio import append_lines, loads, make_dir, write_json, write_text
from saga.locks import LOCK, check_unlocked, lock_folder, unlock_folder
from saga.model import VideoTransformer
from saga.provenance import now
from saga.runs import checkpoint
from saga.runs.files import (
    CONFIG,
    DONE,
    LABELLED,
    METRICS,
    MODEL,
    PROVENANCE,
    RESUME_FILES,
    STATE,
    TSIG,
    TSIG_MAPS,
    TSIG_PROFILES,
    TSNE_GLOB,
    FIGURE_SPLITS,
    HELDOUT,
    HELDOUT_EVALUATION_GLOB,
    by_split,
    identity_options,
    evaluation_file,
    finished,
    load_tensors,
    on_cache,
    read_json,
    save_weights,
    whole_number,
)
from saga.runs.origin import cache_change, changed_cache_accepted, finished_kept_on_changed_cache


# Training options added after runs were made, with the value those runs used: a run folder from
# before an option existed is still the same run (reused, resumed) when the option is left at it.
# The labelled-draw settings' history lives with the draw (labelled.json reads the same values).
ADDED_OPTIONS: dict[str, Any] = {**LEGACY_DRAW, "train_videos": "all"}


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that change what a run computes (not where the cache lies, not the device)."""
    ident = copy.deepcopy(config)
    ident.pop("cache", None)
    train = ident.get("train")
    if isinstance(train, dict):
        train.pop("device", None)
        if ident.get("stage") == 2:
            for key, value in ADDED_OPTIONS.items():
                train.setdefault(key, value)
            ident["train"] = identity_options(train)  # a ce run recorded with lam, margin, ... is the same run
    return json.loads(json.dumps(ident, default=str))


class RunFolder:
    """One run's folder: created, resumed, or found finished and reused."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def open_for(cls, out: str | Path, config: dict[str, Any], provenance: dict[str, Any]) -> "RunFolder":
        """Create the folder, or reopen it when it holds this very run (to resume or reuse).

        A folder holding a different run (other settings or another cache) is refused rather
        than overwritten: the user's finished results are never lost to a typo in --out.
        """
        run = cls(Path(out))
        if (run.path / CONFIG).is_file():
            run._refuse_non_run()  # before the lock: a refused folder gains no .lock
            run.lock()  # before recover(): it moves checkpoint files another trainer may be writing
            try:
                run._reopen(config, provenance)
            except BaseException:
                run.release()
                raise
            if run.done:  # reused as it is: nothing more will be written
                run.release()
            return run
        if run.path.exists():
            if not run.path.is_dir():
                raise SagaError(f"{run.path}: exists and is not a folder; choose another --out")
            extra = sorted(p.name for p in run.path.iterdir() if p.name not in (LABELLED, LOCK))
            if extra:
                raise SagaError(f"{run.path}: not empty and not a saga run ({extra[0]}, ...); choose another --out")
        make_dir(run.path)
        run.lock()
        try:
            write_json(run.path / PROVENANCE, provenance)
            write_json(run.path / CONFIG, config)  # last: a folder with config.json is a run
        except BaseException:
            run.release()
            raise
        return run

    def _refuse_non_run(self) -> None:
        """A config.json without provenance.json is no training run (a run writes provenance.json first):
        a probe folder, or a folder of another tool."""
        if (self.path / PROVENANCE).is_file():
            return
        if read_json(self.path / CONFIG).get("kind") == "probe":
            raise SagaError(f"{self.path}: holds a linear probe (saga probe), not a training run; choose another --out")
        read_json(self.path / PROVENANCE)  # one line: missing; is FOLDER a saga run folder?

    def _reopen(self, config: dict[str, Any], provenance: dict[str, Any]) -> None:
        """Finish a cut-short checkpoint switch, check it is this very run, note a resume or a changed cache.

        A finished run is reused as it is: its provenance is never rewritten (it names the cache its
        weights were trained on). One whose weights were deleted is trained again (`done`).
        """
        self.recover()
        changed = self._check_same(config, provenance)
        if self.done:
            return
        prov = read_json(self.path / PROVENANCE)
        if changed:  # continued on purpose (--resume): say so, and compare with this cache from now on
            _listed(prov, "cache_changes", self.path / PROVENANCE).append(
                {"at": now(), "change": changed, **{k: prov.get(k) for k in ("cache_id", "cache_records",
                                                                             "cache_digest")}})
            prov.update({k: provenance.get(k) for k in ("cache_id", "cache_records", "cache_digest", "cache_path")})
        if (self.path / DONE).is_file():  # finished, then its weights were deleted: no longer finished
            (self.path / DONE).unlink()
            prov["finished"] = None
        resumed = _listed(prov, "resumed", self.path / PROVENANCE)
        sizes = _listed(prov, "world_sizes", self.path / PROVENANCE)
        sizes.extend([None] * (1 + len(resumed) - len(sizes)))  # a run from before they were recorded: unknown
        resumed.append(now())
        sizes.append((provenance.get("world_sizes") or [None])[-1])
        write_json(self.path / PROVENANCE, prov)

    def _check_same(self, config: dict[str, Any], provenance: dict[str, Any]) -> str | None:
        """Refuse another run; a changed cache is refused too unless accepted (then: how it changed)."""
        old = read_json(self.path / CONFIG)
        old_prov = read_json(self.path / PROVENANCE)
        what = "a finished" if self.done else "an unfinished"
        changed = cache_change(old_prov, provenance)
        if changed is not None:
            self._refuse_changed_cache(what, changed, old_prov.get("encoder") == provenance.get("encoder"))
        was, now_ = _fingerprint(old_prov), _fingerprint(provenance)
        if was and now_ and was != now_:
            raise SagaError(f"{self.path}: holds {what} run trained from {_other_weights(old_prov, provenance)}; "
                            "choose another --out to train from the current ones, or delete the folder")
        a, b = _identity(old), _identity(config)
        if a != b:
            diff = _first_difference(a, b)
            raise SagaError(f"{self.path}: holds {what} run with different settings ({diff}); "
                            "choose another --out, or delete the folder to start over")
        return changed

    def _refuse_changed_cache(self, what: str, changed: str, same_features: bool) -> None:
        """Unless an explicit --resume continues an unfinished run (or saga ablate keeps a finished one).

        A finished run is never retrained in place, so --resume has nothing to continue; the advice
        never offers it there (following it used to reuse the old weights under the new cache's name).
        """
        accept, keep = changed_cache_accepted(), finished_kept_on_changed_cache()
        finished = self.done
        if same_features and accept and (keep or not finished):
            return
        new_run = (f"{self.path}: holds {what} run that {changed}; choose another --out to start a new run on "
                   "the current data")
        if not same_features:
            raise SagaError(f"{new_run}; its features come from another encoder or sampling, so it cannot continue "
                            "on this cache")
        if finished and not keep:
            raise SagaError(f"{new_run}, or delete the folder to train it again there (a finished run is never "
                            "retrained in place, so --resume has nothing to continue)")
        raise SagaError(f"{new_run}, or pass --resume to " + ("keep it as it is (its provenance keeps the cache it "
                        "was trained on)" if finished else "continue it on the current cache anyway"))

    # -- one trainer at a time ----------------------------------------------------------------
    def lock(self) -> None:
        """Hold the folder's lock until `release` (or this process ends): a second trainer is refused."""
        lock_folder(self.path, "another saga process is training this run right now; wait for it to finish "
                               "(then rerun to reuse it), or choose another --out")

    def release(self) -> None:
        unlock_folder(self.path)

    def check_not_training(self, doing: str) -> None:
        """Refuse, without waiting or taking the lock, while another process trains here: `doing` (a fit
        on the run's weights: enroll, openset fit, calibrate) would use weights about to change."""
        check_unlocked(self.path, f"another saga process is training this run right now, so {doing} would use "
                                  "weights about to change; wait for it to finish, then rerun")

    @contextmanager
    def released_on_error(self) -> Iterator[None]:
        """The setup between opening a run and training it: an error frees the lock at once, so the
        same process (ablate, a notebook) or the next command can reopen the folder."""
        try:
            yield
        except BaseException:
            self.release()
            raise

    # -- state ---------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """Finished, with its weights: a run whose model.safetensors was deleted is trained again."""
        return (self.path / MODEL).is_file() and finished(self.path)

    @property
    def unfinished(self) -> bool:
        """Holds resume state of a run that has not finished (rerun with --resume to continue it)."""
        return (self.path / STATE).is_file() and not self.done

    def check_resume(self, resume: bool) -> None:
        """Refuse to touch an unfinished run unless asked to resume it."""
        if not resume and self.unfinished:
            raise SagaError(f"{self.path}: holds an unfinished run; pass --resume to continue it, "
                            "or choose another --out")

    def file(self, name: str) -> Path:
        return self.path / name

    def read_optional(self, name: str) -> Any:
        """A JSON file of the folder, or None when it is missing or unreadable (for reports)."""
        try:
            return loads((self.path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_evaluation(self, split: str, result: dict[str, Any], tag: str | None = None) -> Path:
        """metrics-<split>.json, then metrics.json (the latest evaluation on the run's own cache); on a held-out
        cache (`tag`, `loading.heldout_tag`) metrics-<split>@<tag>.json alone. Returns the file to name."""
        if tag:
            write_json(self.path / on_cache(evaluation_file(split), tag), result)
            return self.path / on_cache(evaluation_file(split), tag)
        write_json(self.path / evaluation_file(split), result)
        write_json(self.path / evaluation_file(), result)
        return self.path / evaluation_file()

    def evaluations(self) -> dict[str, Any]:
        """Split -> its metrics-<split>.json on the run's own cache (unreadable ones as None)."""
        return {p.stem.removeprefix("metrics-"): self.read_optional(p.name)
                for p in sorted(self.path.glob("metrics-*.json")) if HELDOUT not in p.name}

    def heldout_evaluations(self) -> dict[str, Any]:
        """File name -> its JSON (None when unreadable) of every evaluation on a held-out cache."""
        return {p.name: self.read_optional(p.name) for p in sorted(self.path.glob(HELDOUT_EVALUATION_GLOB))}

    @property
    def has_tsigs(self) -> bool:
        return (self.path / TSIG).is_file()

    def figures(self) -> list[Path]:
        """The run's plots: T-Sig maps and profiles of each split (test first), then t-SNE maps, then those
        made on held-out caches (named apart: `on_cache`)."""
        names = [by_split(n, split) for split in FIGURE_SPLITS for n in (TSIG_MAPS, TSIG_PROFILES)]
        tsne = sorted((p for p in self.path.glob(TSNE_GLOB) if HELDOUT not in p.name),  # test split's first
                      key=lambda p: (p.stem.rsplit("-", 1)[-1] in FIGURE_SPLITS[1:], p.name))
        kinds = tuple(n.partition(".")[0].rstrip("*") for n in (TSIG_MAPS, TSIG_PROFILES, TSNE_GLOB))
        heldout = sorted(p for p in self.path.glob(f"*{HELDOUT}*.png") if p.name.startswith(kinds))
        return [self.path / n for n in names if (self.path / n).is_file()] + tsne + heldout

    def save_best(self, model: VideoTransformer, epoch: int, metric: float | None) -> None:
        save_weights(self.path / MODEL, model, epoch=epoch, metric=metric)

    def load_best(self, model: VideoTransformer) -> bool:
        """Put the kept epoch's weights (model.safetensors) into `model`; False when none was saved."""
        if not (self.path / MODEL).is_file():
            return False
        tensors, _ = load_tensors(self.path / MODEL)
        model.load_state_dict({k: v.to(model.head.weight.device) for k, v in tensors.items()})
        return True

    def save_state(self, model: VideoTransformer, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict[str, Any]) -> None:
        """The resume point after a completed epoch, committed as one unit (see saga.runs.checkpoint)."""
        checkpoint.save_state(self.path, model, optimizer, scheduler, state)

    def recover(self) -> None:
        """Finish or undo a checkpoint switch cut short by a kill, and remove temporary files left behind."""
        checkpoint.recover(self.path)

    def load_state(self, model: VideoTransformer, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any] | None:
        """Restore model, optimizer and scheduler from the last completed epoch (None: nothing saved)."""
        return checkpoint.load_state(self.path, model, optimizer, scheduler)

    # -- metrics -------------------------------------------------------------------------------
    def append_metrics(self, line: dict[str, Any]) -> None:
        """One line, fsync'ed; a failed write (a full disk) is cut back so no torn line remains (`LineLog`)."""
        append_lines(self.path / METRICS, json.dumps(line, default=str) + "\n")

    def read_metrics(self, tolerant: bool = False) -> list[dict[str, Any]]:
        """metrics.jsonl; `tolerant` skips every unreadable line (for reports); otherwise only a torn last
        line (a run killed mid-write) is skipped, and any other damaged line is one line naming the file."""
        path = self.path / METRICS
        if not path.is_file():
            return []
        lines = [l for l in path.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
        rows = []
        for n, line in enumerate(lines, 1):
            try:
                row = loads(line)
            except ValueError:
                if tolerant or n == len(lines):
                    continue
                row = None
            if not tolerant and not (isinstance(row, dict) and whole_number(row.get("epoch"), 1)):
                raise SagaError(f"{path}: line {n} is damaged ({line[:60]!r}; each line is an object with a whole "
                                "epoch number); delete the line, or the file to drop the run's history")
            rows.append(row)
        return rows

    def trim_metrics(self, last_epoch: int) -> None:
        """Drop the lines of epochs after the resume point (a run killed after logging, before saving) and a torn
        last line; any other damaged line is one line naming the file (`read_metrics`)."""
        lines = [l for l in self.read_metrics() if l["epoch"] <= last_epoch]
        write_text(self.path / METRICS, "".join(json.dumps(l, default=str) + "\n" for l in lines))

    def finish(self, summary: dict[str, Any]) -> None:
        """Mark the run finished (done.json), then drop the resume state it no longer needs."""
        prov = read_json(self.path / PROVENANCE)
        prov["finished"] = now()
        write_json(self.path / PROVENANCE, prov)
        write_json(self.path / DONE, {**summary, "finished": prov["finished"]})
        for name in RESUME_FILES:
            (self.path / name).unlink(missing_ok=True)
        self.release()



def _listed(prov: dict[str, Any], key: str, path: Path) -> list[Any]:
    """provenance.json's list under `key` (created when absent); another value is one line naming the file."""
    value = prov.setdefault(key, [])
    if not isinstance(value, list):
        raise SagaError(f"{path}: '{key}' must be a list, got {value!r}; the file was edited: restore it, "
                        f"or delete the '{key}' entry")
    return value


def _other_weights(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Which stage-1 weights the run was trained from and which it is given: another --from is named as such
    (the run's own stage-1 path, not the new one, as if that run had been retrained)."""
    was, now_ = str(_fingerprint(old))[:12], str(_fingerprint(new))[:12]
    old_path, new_path = (p.get("from_run", {}).get("path") for p in (old, new))
    if old_path is not None and str(old_path) != str(new_path):
        return f"another stage-1 run, {old_path} (fingerprint {was}); --from is {new_path} (fingerprint {now_})"
    return f"other weights of {new_path} (fingerprint {was}, now {now_})"


def _fingerprint(provenance: dict[str, Any]) -> Any:
    """The fingerprint of the stage-1 weights a provenance names (None: none, or not an object)."""
    origin = provenance.get("from_run")
    return origin.get("fingerprint") if isinstance(origin, dict) else None


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    """The first differing key, those both sides hold first: a key one side lacks is most often left out
    because of another option (a ce run records no triplet options), so `loss` is named, not `lam`."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=lambda k: (k not in a or k not in b, k)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else key)
    return f"{where or 'config'}: {a!r} -> {b!r}"
