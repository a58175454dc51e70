"""Report fixes: evaluations and figures of other weights than the run's are not shown as the run's,
every value from a run file is escaped, and a wrongly typed field costs one line, not the report
(CPU, tiny model, fast)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest

import test_explain as te
import test_report_openworld as tro
from saga.explain.metrics import evaluate
from saga.explain.report import load_run, render_report, run_section
from saga.explain.report_logo import logo_section
from saga.explain.report_openworld import beyond_sections, load_beyond
from saga.explain.tsig import run_tsigs
from saga.explain.tsne import run_tsne
from saga.runs import file_fingerprint
from saga.runs.files import CALIBRATION, ENROLLED, OPENSET, ROBUSTNESS

X = "<script>x</script>"


def _html(run: Path) -> str:
    return render_report([run])


def _no_warnings(fn: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


# -- defect 1: metrics, T-Sigs and t-SNE of older weights --------------------------------------------
def test_an_evaluation_and_figures_of_older_weights_are_flagged_not_shown(tmp_path: Path) -> None:
    """Evaluate an unfinished run, then its weights change (resumed to the end): the report must not
    show the old figures as the run's (it did, silently)."""
    from saga.explain.report_html import png_text

    cache = te.make_cache(tmp_path / "cache")
    run = te.make_run(tmp_path / "run", cache)
    (run / "done.json").unlink()  # killed mid-training
    with pytest.warns(UserWarning, match="unfinished .no done.json.: these are the metrics"):
        res = evaluate(run, cache.root, probe=False)
    assert res["run_model"] == file_fingerprint(run / "model.safetensors") and res["run_finished"] is False
    with pytest.warns(UserWarning, match="unfinished"):
        run_tsigs(run, cache.root)
    with pytest.warns(UserWarning, match="unfinished"):
        run_tsne(run, cache.root, color_by="GEN-L")
    assert png_text((run / "tsig_maps.png").read_bytes())["saga:run_model"] == res["run_model"]
    html = _html(run)
    assert "accuracy % (95 % CI)" in html and "The run is unfinished" in html and "other weights" not in html

    other = te.make_run(tmp_path / "other", cache, seed=1)  # "resumed": the best weights change
    shutil.copy(other / "model.safetensors", run / "model.safetensors")
    shutil.copy(other / "done.json", run / "done.json")
    html = _html(run)
    assert "accuracy % (95 % CI)" not in html and "Per-class accuracy" not in html and "Not evaluated" not in html
    assert "metrics-test.json, metrics.json: made with other weights" in html and "<code>saga evaluate</code>" in html
    assert "tsig_maps.png, tsig_profiles.png, tsne_GEN-L.png: made with other weights" in html
    assert "<code>saga tsig / saga tsne</code>" in html and html.count("<img") == 1  # the training curve only
    assert "The run is unfinished" not in html

    fresh = _no_warnings(lambda: evaluate(run, cache.root, probe=False))  # finished: no warning
    assert fresh["run_finished"] is True
    html = _html(run)
    assert "accuracy % (95 % CI)" in html and "metrics-test.json, metrics.json" not in html


def test_files_of_an_older_saga_without_weights_are_still_shown(tmp_path: Path) -> None:
    run = tro._run(tmp_path / "run", beyond=False)
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "done.json").write_text("{}")
    html = _html(run)
    assert "accuracy % (95 % CI)" in html and "other weights" not in html
    for name in ("metrics.json", "metrics-test.json"):  # now stamped with other weights: dropped
        m = json.loads((run / name).read_text())
        (run / name).write_text(json.dumps({**m, "run_model": "0" * 32}))
    assert "accuracy % (95 % CI)" not in _html(run)


def test_a_stale_test_evaluation_falls_back_to_a_current_one(tmp_path: Path) -> None:
    run = tro._run(tmp_path / "run", beyond=False)
    (run / "model.safetensors").write_bytes(b"weights")
    m = json.loads((run / "metrics.json").read_text())
    (run / "metrics-test.json").write_text(json.dumps({**m, "run_model": "0" * 32}))
    (run / "metrics.json").write_text(json.dumps({**m, "split": "val", "run_model": file_fingerprint(
        run / "model.safetensors")}))
    loaded = load_run(run)
    assert loaded["metrics"]["split"] == "val" and loaded["stale"] == ["metrics-test.json"]
    assert "test" not in loaded["splits"]


# -- defect 2: every value escaped; defect 3: wrong types cost one line ------------------------------
def _replace(value: Any, leaf: Any) -> Any:
    if isinstance(value, dict):
        return {k: _replace(v, leaf) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, leaf) for v in value]
    return leaf


@pytest.mark.parametrize("leaf", [X, [X], {X: X}, True])
def test_every_value_of_every_run_file_hostile(tmp_path: Path, leaf: Any) -> None:
    """Each JSON scalar of a full run folder (metrics, calibration, open set, enrollment, robustness) and of an
    experiment's results.json replaced: no raw <script> and no traceback."""
    run = tro._run(tmp_path / "runs" / "run", beyond=True)
    exp = tro._experiment(tmp_path / "exp")
    for path in [*run.glob("*.json"), exp / "results.json"]:
        path.write_text(json.dumps(_replace(json.loads(path.read_text()), leaf)))
    html = render_report([run], openworld=[exp])
    assert "<script>" not in html.lower()


def _leaves(value: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))]
    return [path]


def _set(value: Any, path: tuple, leaf: Any) -> Any:
    out = json.loads(json.dumps(value))
    target = out
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = leaf
    return out


@pytest.mark.parametrize("leaf", [X, "0.5", [X]])
def test_each_metrics_field_wrongly_typed_alone(tmp_path: Path, leaf: Any) -> None:
    """One field at a time (the reviewer's per_class_n, confusion cell, per_class as a string crashed)."""
    run = tro._run(tmp_path / "run", beyond=False)
    metrics = json.loads((run / "metrics-test.json").read_text())
    for path in _leaves(metrics):
        (run / "metrics-test.json").write_text(json.dumps(_set(metrics, path, leaf)))
        html = run_section(1, load_run(run))
        assert "<script>" not in html, path


@pytest.mark.parametrize("name", [CALIBRATION, OPENSET, ENROLLED, ROBUSTNESS])
def test_each_field_of_the_beyond_files_hostile_alone(tmp_path: Path, name: str) -> None:
    """One field at a time, so a section that renders does render the hostile value (calibration's n,
    the open set's n_val, robustness' counts were pasted in raw)."""
    data = json.loads((tro._run(tmp_path / "full", beyond=True) / name).read_text())
    run = tro._run(tmp_path / "run", beyond=False)
    for path in _leaves(data):
        (run / name).write_text(json.dumps(_set(data, path, X)))
        assert "<script>" not in beyond_sections(load_beyond(run, None), "run"), path


def test_each_field_of_an_experiment_hostile_alone(tmp_path: Path) -> None:
    """The reviewer's seed and k of a results.json were pasted in raw (header and enrollment heading)."""
    exp = tro._experiment(tmp_path / "exp", with_scores=False)
    data = json.loads((exp / "results.json").read_text())
    for path in _leaves(data):
        (exp / "results.json").write_text(json.dumps(_set(data, path, X)))
        assert "<script>" not in logo_section(exp), path


def test_a_damaged_confusion_matrix_is_one_line(tmp_path: Path) -> None:
    run = tro._run(tmp_path / "run", beyond=False)
    m = json.loads((run / "metrics-test.json").read_text())
    m["confusion"][0][0] = X
    (run / "metrics-test.json").write_text(json.dumps(m))
    html = _html(run)
    assert "confusion matrix: unreadable data (TypeError" in html and "Per-class accuracy" in html


# -- defect 4: T-Sigs and t-SNE of another split or cache kept apart, recorded and captioned ------------
def test_tsig_and_tsne_of_another_split_or_cache_keep_the_test_figures_and_say_what_they_show(
        tmp_path: Path) -> None:
    """`--split val` used to overwrite tsig.npz / tsne_GEN-L.png (the test figures the docs and the report
    describe) and nothing recorded the split, the cache or the t-SNE settings."""
    import numpy as np

    from saga.explain.report_html import png, png_text
    from saga.explain.tsne import perplexity_for
    from matplotlib.figure import Figure

    cache = te.make_cache(tmp_path / "cache")
    run = te.make_run(tmp_path / "run", cache)
    _no_warnings(lambda: run_tsigs(run, cache.root))
    _no_warnings(lambda: run_tsne(run, cache.root, color_by="GEN-L", seed=3))
    test_files = {n: (run / n).read_bytes() for n in ("tsig.npz", "tsig_maps.png", "tsne_GEN-L.png", "tsne_GEN-L.csv")}
    written = _no_warnings(lambda: run_tsigs(run, cache.root, split="val"))
    assert {k: p.name for k, p in written.items()} == {"npz": "tsig-val.npz", "csv": "tsig_profiles-val.csv",
                                                      "maps": "tsig_maps-val.png", "profiles": "tsig_profiles-val.png"}
    val_map = _no_warnings(lambda: run_tsne(run, cache.root, color_by="GEN-L", split="val"))
    assert val_map.png.name == "tsne_GEN-L-val.png" and val_map.json.name == "tsne_GEN-L-val.json"
    assert all((run / n).read_bytes() == data for n, data in test_files.items())

    for name, split, n in (("tsig.npz", "test", 15), ("tsig-val.npz", "val", 5)):
        with np.load(run / name, allow_pickle=False) as z:
            assert (str(z["split"]), str(z["cache_id"]), int(z["counts"].sum())) == (split, cache.cache_id, n)
    meta = json.loads((run / "tsne_GEN-L.json").read_text())
    assert {k: meta[k] for k in ("split", "cache_id", "tsne_seed", "perplexity", "method", "n", "color_by")} == {
        "split": "test", "cache_id": cache.cache_id, "tsne_seed": 3, "perplexity": perplexity_for(15),
        "method": "exact", "n": 15, "color_by": "GEN-L"}
    assert meta["run_model"] == file_fingerprint(run / "model.safetensors")
    stamp = png_text(test_files["tsne_GEN-L.png"])
    assert (stamp["saga:split"], stamp["saga:cache_id"], stamp["saga:tsne_seed"]) == ("test", cache.cache_id, "3")
    assert png_text((run / "tsig_maps-val.png").read_bytes())["saga:split"] == "val"

    html = _html(run)
    maps = "T-Sig maps (penultimate block, mean over heads and videos)"
    assert f"{maps} · test split" in html and f"{maps} · val split" in html
    assert "t-SNE of φ (tsne_GEN-L) · test split · t-SNE seed 3, perplexity" in html
    assert html.index(f"{maps} · test split") < html.index(f"{maps} · val split")
    assert html.index("(tsne_GEN-L) · test split") < html.index("(tsne_GEN-L-val) · val split")

    other = te.make_cache(tmp_path / "held-out")  # the run's encoder, another cache id
    with pytest.warns(UserWarning, match="not the run's training cache"):
        run_tsne(run, other.root, color_by="GEN-L")
    tag = f"held-out-{other.cache_id[:8]}"  # named apart: the run's own test map stays
    assert (run / "tsne_GEN-L.png").read_bytes() == test_files["tsne_GEN-L.png"]
    assert (f"(tsne_GEN-L@{tag}) · test split of cache {other.cache_id[:12]}, not the run&#x27;s training cache "
            f"{cache.cache_id[:12]}") in _html(run)
    (run / "tsne_SD-L.png").write_bytes(png(Figure()))  # an older saga's map: no metadata
    assert "(tsne_SD-L) · split not recorded (made by an older saga)" in _html(run)


# -- defect 5: results on a held-out cache kept apart from the run's own, and from each other ---------------
def _cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from saga.cli import app

    res = CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    return res


def _held_out(tmp_path: Path, name: str, per_gen: int) -> Any:
    """A cache of the run's encoder with another cache id (a held-out set: another seed, another dataset), of
    other videos than the run's: videos it was trained or validated on are left out (`saga.explain.seen`)."""
    return te.make_cache(tmp_path / name, per_gen=per_gen, seed=1)


def test_evaluate_on_a_held_out_cache_keeps_the_run_s_own_metrics_byte_identical(tmp_path: Path) -> None:
    """`saga evaluate RUN --cache OTHER` wrote metrics.json / metrics-test.json, replacing the run's own."""
    cache = te.make_cache(tmp_path / "cache")
    run = te.make_run(tmp_path / "run", cache)
    _cli("evaluate", str(run), "--cache", str(cache.root), "--no-probe")
    own = {n: (run / n).read_bytes() for n in ("metrics.json", "metrics-test.json")}
    other = _held_out(tmp_path, "seed 1", per_gen=5)
    res = _cli("evaluate", str(run), "--cache", str(other.root), "--no-probe")
    assert {n: (run / n).read_bytes() for n in own} == own
    name = f"metrics-test@seed_1-{other.cache_id[:8]}.json"
    assert sorted(p.name for p in run.glob("metrics*.json")) == sorted([*own, name])
    held = json.loads((run / name).read_text())
    assert (held["cache_id"], held["n"], held["heldout"]) == (other.cache_id, 20, f"seed_1-{other.cache_id[:8]}")
    assert name in " ".join(res.stdout.split()) and "held-out cache" in res.stdout
    out = tmp_path / "elsewhere"  # --out: the same names, in that folder; the run folder untouched
    _cli("evaluate", str(run), "--cache", str(other.root), "--no-probe", "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == [name]
    assert json.loads((out / name).read_text())["n"] == held["n"]
    assert {n: (run / n).read_bytes() for n in own} == own and json.loads(own["metrics.json"])["n"] == 15


def test_two_held_out_caches_keep_two_evaluations_and_tsigs(tmp_path: Path) -> None:
    """Evaluating (or `saga tsig` / `saga tsne`) on two held-out caches kept only the last; `predict --tsig`
    then compared new videos with the held-out cache's T-Sigs."""
    from saga.explain.tsig import load_tsigs

    cache = te.make_cache(tmp_path / "cache")
    run = te.make_run(tmp_path / "run", cache)
    _cli("evaluate", str(run), "--cache", str(cache.root), "--no-probe")
    _cli("tsig", str(run), "--cache", str(cache.root))
    own = {n: (run / n).read_bytes() for n in ("metrics.json", "metrics-test.json", "tsig.npz", "tsig_maps.png")}
    caches = [_held_out(tmp_path, "a", per_gen=5), _held_out(tmp_path, "b", per_gen=6)]
    for other in caches:
        _cli("evaluate", str(run), "--cache", str(other.root), "--no-probe")
        _cli("tsig", str(run), "--cache", str(other.root))
        _cli("tsne", str(run), "--cache", str(other.root), "--color-by", "GEN-L")
    assert {n: (run / n).read_bytes() for n in own} == own
    for other, n in zip(caches, (20, 25)):
        tag = f"{other.root.name}-{other.cache_id[:8]}"
        assert json.loads((run / f"metrics-test@{tag}.json").read_text())["n"] == n
        assert sum(s["n"] for s in load_tsigs(run / f"tsig@{tag}.npz").values()) == n
        assert (run / f"tsig_maps@{tag}.png").is_file() and (run / f"tsne_GEN-L@{tag}.png").is_file()
    assert sum(s["n"] for s in load_tsigs(run).values()) == 15  # what predict --tsig compares with


def test_the_report_shows_held_out_evaluations_apart_from_the_run_s_own(tmp_path: Path) -> None:
    """The report showed a held-out evaluation as the run's own result (summary row, cards, per-class)."""
    cache = te.make_cache(tmp_path / "cache")
    run = te.make_run(tmp_path / "run", cache)
    _cli("evaluate", str(run), "--cache", str(cache.root), "--no-probe")
    caches = [_held_out(tmp_path, "seed1", per_gen=5), _held_out(tmp_path, "seed2", per_gen=6)]
    for other in caches:
        _cli("evaluate", str(run), "--cache", str(other.root), "--no-probe")
    loaded = load_run(run)
    assert loaded["metrics"]["cache_id"] == cache.cache_id and loaded["metrics"]["n"] == 15
    assert set(loaded["splits"]) == {"test"} and len(loaded["heldout"]["rows"]) == 2
    html = _html(run)
    summary = html[html.index('id="summary"'):html.index("</section>", html.index('id="summary"'))]
    assert summary.count("<tr>") == 2 and "<td>15</td>" in summary  # header + the run's own row, n = 15
    section = html[html.index("Held-out evaluations"):]
    metrics = html[html.index("<h3>Metrics"):html.index("Held-out evaluations")]
    assert "seed1" not in metrics and "seed2" not in metrics and "also evaluated" not in metrics
    for other, n in zip(caches, (20, 25)):
        row = section[section.index(f"<td class=l>{other.root.name}</td>"):]
        row = row[:row.index("</tr>")]
        assert other.cache_id[:12] in row and f"<td>{n}</td>" in row and "[" in row  # n and the interval
        assert f"per-class accuracy: {other.root.name} · test · n={n}" in section
    legacy = json.loads(next(run.glob("metrics-test@seed1-*.json")).read_text())  # an older saga's held-out run
    old_style = {k: v for k, v in legacy.items() if k not in ("heldout", "cache")}
    (run / "metrics-test.json").write_text(json.dumps(old_style))
    assert f"These metrics are of cache {caches[0].cache_id[:12]}, not the run's training cache" in _html(run)
    for name in [p.name for p in run.glob("metrics-test@*.json")]:  # hostile values: escaped, never raw
        (run / name).write_text(json.dumps(_replace(json.loads((run / name).read_text()), X)))
    assert "<script>" not in _html(run)
