"""What `saga evaluate` says of open-world figures on a val split that fitted them: a calibration.json / openset.json
written before saga recorded the cache it was fitted on (`fitted_on_cache`) was said, as a fact, to be fitted on
this val; it is now said to be presumed. A file fitted on a held-out cache's val, evaluated on that val, was not
flagged at all (held-out splits chose no weights, but this one fitted the temperature)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from saga.cache.store import FeatureCache
from saga.explain.split_flags import FITTED_KEY, mark_openworld, openworld_label, split_warning
from test_train_guards import cache, stage1  # noqa: F401 - a tiny cache and a stage-1 run chosen on its val split

PRESUMED = ("(presumably this cache's val: calibration.json, written by an older saga, does not record which cache "
            "it was fitted on; refit to record it)")


def _metrics(split: str = "val", heldout: bool = False, **fitted_on: Any) -> dict[str, Any]:
    """An evaluation of cache "own" (or held-out cache "h") whose open-world files record `fitted_on` per file."""
    ow = {key: ({} if on is None else {"fitted_on_cache": on}) for key, on in fitted_on.items()}
    return {"split": split, "cache_id": "h" if heldout else "own", **({"heldout": "h-1"} if heldout else {}),
            "openworld": {"split": split, **ow}}


def _marked(m: dict[str, Any]) -> dict[str, Any]:
    mark_openworld(m)
    return m


def test_an_older_file_without_its_cache_is_said_to_be_presumed() -> None:
    m = _marked(_metrics(calibration=None))
    assert split_warning(m) == (f"the temperature was fitted on val {PRESUMED}: the open-world figures are then "
                                "optimistic; use --split test")
    assert openworld_label(m) == "val (fitted the temperature, presumably: optimistic)"
    both = _marked(_metrics(calibration=None, openset="own"))
    assert split_warning({**both, "checkpoint_chosen_on_split": {"selected_on": "val"}}) == (
        f"the checkpoint was chosen on val and the temperature and the unknown threshold fitted on it {PRESUMED}: "
        "this accuracy and the open-world figures are optimistic; use --split test")


def test_a_file_that_records_this_cache_is_said_plainly_and_another_caches_not_at_all() -> None:
    m = _marked(_metrics(calibration="own"))
    assert split_warning(m) == "the temperature was fitted on val: the open-world figures are optimistic; use --split test"
    assert openworld_label(m) == "val (fitted the temperature: optimistic)"
    assert FITTED_KEY not in _marked(_metrics(calibration="elsewhere"))["openworld"]
    assert FITTED_KEY not in _marked(_metrics(split="test", calibration=None))["openworld"]


def test_a_fit_on_a_held_out_caches_val_is_flagged_there() -> None:
    m = _marked(_metrics(heldout=True, openset="h"))
    assert split_warning(m) == ("the unknown threshold was fitted on val: the open-world figures are optimistic; "
                                "use --split test")
    assert FITTED_KEY not in _marked(_metrics(heldout=True, openset="own"))["openworld"]  # fitted on the run's own
    assert FITTED_KEY not in _marked(_metrics(heldout=True, openset=None))["openworld"]  # presumed the run's own


def test_saga_evaluate_says_an_older_calibration_is_presumed_fitted_on_this_val(cache: FeatureCache,  # noqa: F811
                                                                                 stage1: Path,  # noqa: F811
                                                                                 tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from saga.cli import app
    from saga.openworld.api import calibrate_run

    run, copy = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(stage1, run)
    shutil.copytree(cache.root, copy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few val videos
        calibrate_run(run, copy, report_split=None)
    cal = json.loads((run / "calibration.json").read_text())
    del cal["cache_id"], cal["fit_digest"]  # written before they were recorded
    (run / "calibration.json").write_text(json.dumps(cal))
    res = CliRunner().invoke(app, ["evaluate", str(run), "--cache", str(copy), "--split", "val", "--no-probe",
                                   "--format", "json"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.stderr.split())
    assert f"fitted on it {PRESUMED}: this accuracy and the open-world figures are optimistic" in said
    assert json.loads(res.stdout)["openworld"][FITTED_KEY]["cache_unknown"] == ["calibration.json"]
