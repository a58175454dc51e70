"""Reliability, run folders and changed caches: a finished run is reused only for the same data and settings;
a changed cache is a new run, or `--resume` on purpose (split from test_reliability_runs.py).

Each case of docs/reliability.md is proven in one of the tests/test_reliability_*.py files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saga.errors import SagaError
from saga.runs import RunFolder
from test_reliability_cache import make_cache



def finished(run: RunFolder) -> None:
    """Mark a run finished as training does: its weights (a stand-in file here), then done.json."""
    (run.path / "model.safetensors").write_bytes(b"weights")
    run.finish({"epochs": 1})



def test_a_changed_cache_does_not_reuse_a_finished_run(tmp_path: Path) -> None:
    from test_cache import fill

    from saga.runs import RunFolder, make_provenance

    cache = make_cache(tmp_path, parts=1)
    config = {"level": "BIN-L", "train": {"epochs": 1}}
    finished(RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0)))
    assert RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0)).done  # same data: reused
    stage2 = {"stage": 2, "level": "TEAM-L", "train": {"epochs": 1}}  # made before --per-generator existed
    finished(RunFolder.open_for(tmp_path / "old", stage2, make_provenance(cache, 0)))
    now = {**stage2, "train": {"epochs": 1, "per_generator": 0}}
    assert RunFolder.open_for(tmp_path / "old", now, make_provenance(cache, 0)).done  # the same run: reused
    with pytest.raises(SagaError, match="different settings"):
        RunFolder.open_for(tmp_path / "old", {**stage2, "train": {"epochs": 1, "per_generator": 1}},
                           make_provenance(cache, 0))
    fill(cache, 6, shard_rows=4, seed=5)  # more videos extracted into the same cache
    cache = type(cache).open(cache.root)
    with pytest.raises(SagaError, match=r"trained on 4 records of this cache, which now holds 6"):
        RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0))




# --- a changed cache: a new run, or --resume on purpose ------------------------------------------------------

def test_a_changed_loss_is_named_not_the_options_it_drops(tmp_path: Path) -> None:
    """A ce run records no triplet options: the refusal names the loss the user changed, not `lam`."""
    from saga.runs import make_provenance

    cache = make_cache(tmp_path, parts=1)
    hnm = {"stage": 2, "level": "SD-L", "train": {"epochs": 1, "loss": "ce+hnm", "lam": 0.5, "margin": 0.2,
                                                  "mine_every": 1, "positive": "same-class"}}
    finished(RunFolder.open_for(tmp_path / "run", hnm, make_provenance(cache, 0)))
    ce = {**hnm, "train": {"epochs": 1, "loss": "ce"}}
    with pytest.raises(SagaError, match=r"different settings \(train.loss: 'ce\+hnm' -> 'ce'\)"):
        RunFolder.open_for(tmp_path / "run", ce, make_provenance(cache, 0))
    finished(RunFolder.open_for(tmp_path / "ce", ce, make_provenance(cache, 0)))
    with pytest.raises(SagaError, match=r"\(train.loss: 'ce' -> 'ce\+hnm'\)"):
        RunFolder.open_for(tmp_path / "ce", hnm, make_provenance(cache, 0))


def test_training_into_a_probe_folder_is_refused_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    """The refusal used to come after taking the training lock, leaving a stray .lock in the probe folder."""
    from saga.runs import make_provenance

    probe = tmp_path / "probe-sd-l"
    probe.mkdir()
    (probe / "config.json").write_text(json.dumps({"kind": "probe", "level": "SD-L"}))
    before = sorted(p.name for p in probe.iterdir())
    with pytest.raises(SagaError, match="holds a linear probe .* not a training run; choose another --out"):
        RunFolder.open_for(probe, {"stage": 2, "level": "SD-L"}, make_provenance(make_cache(tmp_path), 0))
    assert sorted(p.name for p in probe.iterdir()) == before


def test_a_changed_cache_is_refused_unless_resume_is_explicit(tmp_path: Path) -> None:
    from test_cache import fill

    from saga.runs import RunFolder, accept_changed_cache, make_provenance

    cache = make_cache(tmp_path, parts=1)
    config = {"level": "BIN-L", "train": {"epochs": 1}}
    RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0))  # an unfinished run
    fill(cache, 6, shard_rows=4, seed=5)  # more videos extracted into the same cache
    cache = type(cache).open(cache.root)
    with pytest.raises(SagaError, match=r"holds an unfinished run that was trained on 4 records of this cache, "
                                        r"which now holds 6 .*choose another --out to start a new run on the "
                                        r"current data, or pass --resume to continue it"):
        RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0))
    with accept_changed_cache():
        run = RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0))
    prov = json.loads((run.path / "provenance.json").read_text())
    assert prov["cache_records"] == 6 and prov["cache_changes"][0]["cache_records"] == 4  # recorded, not hidden
    RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0))  # from now on: this cache
    other = {**make_provenance(cache, 0), "cache_id": "another", "encoder": {**prov["encoder"], "dim": 99}}
    with accept_changed_cache(), pytest.raises(SagaError, match="another encoder or sampling, so it cannot"):
        RunFolder.open_for(tmp_path / "run", config, other)


def test_resume_never_puts_a_changed_cache_under_a_finished_run(tmp_path: Path) -> None:
    """--resume on a finished run reused its weights and rewrote provenance.json to name the new cache (and
    from then on the guard let plain reruns reuse it): it is refused, and only saga ablate keeps it as it is."""
    from test_cache import fill

    from saga.runs import accept_changed_cache, make_provenance

    cache = make_cache(tmp_path, parts=1)
    config = {"level": "BIN-L", "train": {"epochs": 1}}
    finished(RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0)))
    before = (tmp_path / "run" / "provenance.json").read_bytes()
    fill(cache, 6, shard_rows=4, seed=5)
    cache = type(cache).open(cache.root)
    for accept in (False, True):  # saga train / attribute, without and with --resume
        with accept_changed_cache(accept), pytest.raises(SagaError) as info:
            RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0))
        assert str(info.value).endswith("holds a finished run that was trained on 4 records of this cache, which "
                                        "now holds 6 (videos added or re-extracted); choose another --out to start a "
                                        "new run on the current data, or delete the folder to train it again there "
                                        "(a finished run is never retrained in place, so --resume has nothing to "
                                        "continue)")
    with accept_changed_cache(False, keep_finished=True), pytest.raises(SagaError, match="pass --resume to keep it"):
        RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0))  # saga ablate without --resume
    with accept_changed_cache(True, keep_finished=True):  # saga ablate --resume: kept as it is
        assert RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0)).done
    assert (tmp_path / "run" / "provenance.json").read_bytes() == before  # still the cache it was trained on
    with pytest.raises(SagaError, match="which now holds 6"):  # the guard stays armed
        RunFolder.open_for(tmp_path / "run", config, make_provenance(cache, 0))


def test_the_train_commands_pass_an_explicit_resume_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--resume (explicit) accepts a changed cache, the default does not, --no-resume refuses an unfinished run."""
    import saga.train.attribute as attribute
    import saga.train.stage1 as stage1
    from saga.commands import phase2
    from saga.runs.origin import changed_cache_accepted

    seen: list[bool] = []
    fake = lambda *args, **kwargs: seen.append(changed_cache_accepted()) or tmp_path  # noqa: E731
    monkeypatch.setattr(stage1, "train_stage1", fake)
    monkeypatch.setattr(attribute, "train_attribution", fake)
    (tmp_path / "zarr.json").write_text("{}")  # stand-in cache (the CLI checks it)
    for resume in (None, True):
        phase2.train(stage=1, cache=tmp_path, out=tmp_path / "s1", resume=resume)
        phase2.attribute(level="BIN-L", cache=tmp_path, scratch=True, out=tmp_path / "s2", resume=resume)
    assert seen == [False, False, True, True]
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "state.json").write_text("{}")
    with pytest.raises(SagaError, match="holds an unfinished run; pass --resume"):
        phase2.train(stage=1, cache=tmp_path, out=tmp_path / "s1", resume=False)
