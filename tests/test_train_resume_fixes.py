"""Reopening runs: an edited labelled.json, damaged weights and the advice that restores them, ce runs and the
triplet options, edited resume files (state.json, provenance.json, metrics.jsonl)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from typer.testing import CliRunner

from saga.cache.fraction import resolve_labelled, saved_or_drawn
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.progress import ProgressEvent
from saga.runs import load_model
from saga.train.attribute import load_base, train_attribution
from saga.train.stage1 import train_stage1
from test_train import Killed, a_config, s1_config
from test_train_guards import cache, stage1  # noqa: F401 - the same tiny cache and stage-1 run (module fixtures)

RESTART = ("delete last.safetensors, optimizer.safetensors, state.json and metrics.jsonl to restart this run "
           "from its first epoch")


@pytest.fixture(scope="module")
def killed(cache: FeatureCache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stage1 fixture's run (2 epochs) killed after epoch 1's checkpoint."""
    def kill(event: ProgressEvent) -> None:
        if event.kind == "epoch":
            raise Killed

    out = tmp_path_factory.mktemp("killed") / "run"
    with pytest.raises(Killed):
        train_stage1(cache.root, out, s1_config(epochs=2), progress=kill)
    assert (out / "state.json").is_file()
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return shutil.copytree(run, tmp_path / run.name)


def edit_json(path: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# --- labelled.json: checked against the cache --------------------------------------------------------------

def _move_real(data: dict[str, Any]) -> None:
    data["classes"]["T2V"].append(data["classes"]["real"].pop())


def _hand_made_without_a_class(data: dict[str, Any]) -> None:
    """A file without the draw's record (counts, available): every class with train videos must be there."""
    del data["counts"], data["available"], data["classes"]["T2V"]


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["classes"].__setitem__("Bogus", d["classes"].pop("T2V")),
     "class 'Bogus' is not a TASK-L class of taxonomy 'synth'"),
    (_move_real, r"real/\d+\.mp4 is listed under 'T2V' but the cache labels it 'real' at TASK-L"),
    (lambda d: d["classes"].pop("T2V"), "class 'T2V' lists no videos, but the file's counts record it"),
    (_hand_made_without_a_class, "class 'T2V' lists no videos, but the cache has train videos of it"),
    (lambda d: d["classes"]["I2V"].append(d["classes"]["I2V"][0]), r"\S+\.mp4 is listed twice"),
    (lambda d: d["classes"]["I2V"].append(d["classes"]["T2V"][0]), r"\S+\.mp4 is listed under 'I2V' but the cache labels it 'T2V'"),
    (lambda d: d["classes"].__setitem__("T2V", []), "class 'T2V' lists no videos"),
    (lambda d: d.__setitem__("classes", []), "'classes' must map each class to a list of video paths"),
    (lambda d: d.__setitem__("counts", [3]), "'counts' and 'available' must map classes to numbers"),
])
def test_an_edited_labelled_json_is_one_line_naming_it(cache: FeatureCache, tmp_path: Path,
                                                       edit: Callable, message: str) -> None:
    """Made-up classes, contradicted labels and dropped classes trained silently; other shapes were tracebacks."""
    wanted, train = a_config().labelled_settings(cache.cache_id), cache.ok_records("train")
    path = tmp_path / "labelled.json"
    resolve_labelled(path, train, cache.taxonomy, wanted)
    edit_json(path, edit)
    with pytest.raises(SagaError, match=rf"^{path}: {message}.*use another --out folder$"):
        saved_or_drawn(path, train, cache.taxonomy, wanted)


def test_a_lone_edited_labelled_json_trains_nothing(cache: FeatureCache, stage1: Path, tmp_path: Path) -> None:
    out = tmp_path / "s2"
    out.mkdir()
    resolve_labelled(out / "labelled.json", cache.ok_records("train"), cache.taxonomy,
                     a_config().labelled_settings(cache.cache_id))
    edit_json(out / "labelled.json", _move_real)
    with pytest.raises(SagaError, match="but the cache labels it 'real'"):
        train_attribution(cache.root, out, a_config(epochs=1), from_run=stage1)
    assert not (out / "config.json").exists()


def test_a_saved_subset_stays_valid_as_the_cache_gains_a_class(cache: FeatureCache, tmp_path: Path) -> None:
    """The saved labels never change under a run: a class drawn before is required, one the cache gained is not;
    classes come back in the taxonomy's order whatever the file's."""
    wanted, train = a_config().labelled_settings(cache.cache_id), cache.ok_records("train")
    path = tmp_path / "labelled.json"
    before = [r for r in train if r.labels["TASK-L"] != "T2V"]  # the cache before its T2V videos were extracted
    drawn = resolve_labelled(path, before, cache.taxonomy, wanted)
    edit_json(path, lambda d: d.__setitem__("classes", dict(reversed(d["classes"].items()))))
    subset, saved = saved_or_drawn(path, train, cache.taxonomy, wanted)
    assert saved and subset == drawn and list(subset) == list(drawn) and "T2V" not in subset


# --- damaged weights: advice that works ----------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_resume_weights_say_how_to_restart_and_the_restart_works(
        cache: FeatureCache, stage1: Path, killed: Path, tmp_path: Path, damage: str) -> None:
    """"delete it and train again" left a run that said "no saved weights yet" at every rerun, forever."""
    out = copy_of(killed, tmp_path)
    last = out / "last.safetensors"
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[:1000])
    else:
        last.unlink()
    with pytest.raises(SagaError, match=rf"^{last}: (unreadable safetensors file \(.*\)|missing); the resume state "
                                        rf"is damaged: {RESTART}$"):
        train_stage1(cache.root, out, s1_config(epochs=2))
    for name in ("last.safetensors", "optimizer.safetensors", "state.json", "metrics.jsonl"):
        (out / name).unlink(missing_ok=True)
    train_stage1(cache.root, out, s1_config(epochs=2))
    assert (out / "model.safetensors").read_bytes() == (stage1 / "model.safetensors").read_bytes()
    assert [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_finished_run_whose_weights_were_deleted_is_trained_again(cache: FeatureCache, stage1: Path,
                                                                    tmp_path: Path) -> None:
    """It used to be reused without weights, and --from then sent the user to a rerun that did nothing."""
    run = copy_of(stage1, tmp_path)
    model = run / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(SagaError, match=rf"^{model}: unreadable safetensors file \(.*\); delete it and rerun the "
                                        r"run's training command to train it again$"):
        load_base(run, cache)
    model.unlink()
    with pytest.raises(SagaError, match=r"no model.safetensors; its weights were deleted: rerun the run's training"):
        load_model(run)
    events: list[ProgressEvent] = []
    train_stage1(cache.root, run, s1_config(epochs=2), progress=events.append)
    events = [e for e in events if e.kind != "status"]  # setup steps (kind status) come first
    assert events[0].kind == "start" and model.read_bytes() == (stage1 / "model.safetensors").read_bytes()
    assert json.loads((run / "provenance.json").read_text())["finished"] is not None
    load_base(run, cache)


def test_an_unfinished_run_without_its_kept_weights_says_how_to_restart(cache: FeatureCache, killed: Path,
                                                                       tmp_path: Path) -> None:
    out = copy_of(killed, tmp_path)
    (out / "model.safetensors").unlink()
    with pytest.raises(SagaError, match=rf"model.safetensors: missing, but state.json kept epoch 1; {RESTART}$"):
        train_stage1(cache.root, out, s1_config(epochs=2))


# --- loss ce: the triplet options --------------------------------------------------------------------------

@pytest.mark.parametrize("flags,toml,named", [
    (["--lam", "0.3"], "", "--lam"),
    (["--margin", "0.9", "--mine-every", "2"], "", "--margin, --mine-every"),
    ([], 'lam = 0.3\npositive = "random"\n', "lam in {config}, positive in {config}"),
])
def test_triplet_options_with_loss_ce_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  flags: list[str], toml: str, named: str) -> None:
    """They were accepted, recorded in config.json and ignored: bit-identical weights for every --lam."""
    import saga.train.attribute
    from saga.cli import app

    monkeypatch.setattr(saga.train.attribute, "train_attribution", lambda *a, **k: pytest.fail("trained"))
    config = tmp_path / "run.toml"
    config.write_text('loss = "ce"\n' + toml)
    result = CliRunner().invoke(app, ["attribute", "--out", str(tmp_path / "r"), "--config", str(config), *flags])
    verb = "apply" if "," in named else "applies"
    assert isinstance(result.exception, SagaError) and str(result.exception) == (
        f"{named.format(config=config)}: {verb} to loss ce+hnm / ce+semihnm only (loss ce has no triplet term); "
        f"leave {'them' if ',' in named else 'it'} out, or choose one of those losses")
    assert not (tmp_path / "r").exists()


def test_a_ce_run_records_no_triplet_options_and_an_older_one_that_did_is_reused(
        cache: FeatureCache, stage1: Path, tmp_path: Path) -> None:
    out = train_attribution(cache.root, tmp_path / "ce", a_config(loss="ce", epochs=1), from_run=stage1)
    train = json.loads((out / "config.json").read_text())["train"]
    assert not {"lam", "margin", "mine_every", "positive"} & set(train) and train["loss"] == "ce"
    edit_json(out / "config.json", lambda c: c["train"].update(lam=0.3, margin=0.9, mine_every=2))  # as before
    events: list[ProgressEvent] = []
    train_attribution(cache.root, out, a_config(loss="ce", epochs=1), from_run=stage1, progress=events.append)
    events = [e for e in events if e.kind != "status"]  # setup steps (kind status) come first
    assert events[0].kind == "reused"


# --- edited resume files: one line naming the file -----------------------------------------------------------

def _set(*keys: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value
    return edit


@pytest.mark.parametrize("edit,message", [
    (_set("step", value="abc"), "'step' must be a whole number >= 0, got 'abc'"),
    (_set("bad_epochs", value="x"), "'bad_epochs' must be a whole number >= 0, got 'x'"),
    (_set("epoch", value=True), "'epoch' must be a whole number >= 0, got True"),
    (_set("best_epoch", value=0), "'best_epoch' must be a whole number >= 1 or null, got 0"),
    (_set("best_metric", value="0.5"), "'best_metric' must be a number or null, got '0.5'"),
    (_set("best_loss", value="low"), "'best_loss' must be a number or null, got 'low'"),
    (_set("scheduler", "last_epoch", value="x"), "'scheduler.last_epoch' is missing or of the wrong kind for this run"),
    (_set("optimizer", "param_groups", 0, "lr", value="x"),
     r"'optimizer.param_groups\[0\].lr' is missing or of the wrong kind for this run"),
    (lambda s: s.pop("scheduler"), "'scheduler' is missing or of the wrong kind for this run"),
])
def test_an_edited_state_json_is_one_line_naming_it(cache: FeatureCache, killed: Path, tmp_path: Path,
                                                    edit: Callable, message: str) -> None:
    out = copy_of(killed, tmp_path)
    edit_json(out / "state.json", edit)
    with pytest.raises(SagaError, match=rf"^{out / 'state.json'}: {message}; the file was edited or damaged: "
                                        rf"{RESTART}$"):
        train_stage1(cache.root, out, s1_config(epochs=2))


def test_an_edited_provenance_list_is_one_line_naming_it(cache: FeatureCache, killed: Path, tmp_path: Path) -> None:
    out = copy_of(killed, tmp_path)
    edit_json(out / "provenance.json", _set("resumed", value="yesterday"))
    with pytest.raises(SagaError, match=rf"^{out / 'provenance.json'}: 'resumed' must be a list, got 'yesterday'"):
        train_stage1(cache.root, out, s1_config(epochs=2))


@pytest.mark.parametrize("first", ["5", '{"epoch": "1"}', "cut"])
def test_a_damaged_metrics_line_before_the_last_is_one_line(cache: FeatureCache, killed: Path, tmp_path: Path,
                                                            first: str) -> None:
    """A damaged first line used to be dropped on resume without a word (the history then began at epoch 2)."""
    out = copy_of(killed, tmp_path)
    metrics = out / "metrics.jsonl"
    line = metrics.read_text()
    metrics.write_text((line[:20] if first == "cut" else first) + "\n" + line)
    with pytest.raises(SagaError, match=rf"^{metrics}: line 1 is damaged .*; delete the line, or the file"):
        train_stage1(cache.root, out, s1_config(epochs=2))


def test_a_torn_last_metrics_line_is_dropped_on_resume(cache: FeatureCache, killed: Path, tmp_path: Path) -> None:
    out = copy_of(killed, tmp_path)
    metrics = out / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 2, "lo')  # killed while writing epoch 2's line
    train_stage1(cache.root, out, s1_config(epochs=2))
    assert [json.loads(l)["epoch"] for l in metrics.read_text().splitlines()] == [1, 2]
