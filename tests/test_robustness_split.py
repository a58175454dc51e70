"""`saga robustness` per split and per scored video: another --split into the same --out works, a refused
append is blamed on its real cause, and only videos with a class at the run's level are scored and re-encoded.

CPU, tiny and deterministic: tiny clips from conftest, the tiny test encoder, untrained runs saved by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import make_video_tree, write_clip
from saga.cache.provenance import cache_provenance
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.model import ModelConfig, VideoTransformer
from saga.pipeline.extract import ExtractConfig, extract
from saga.robustness.perturb import parse_list
from saga.robustness.runner import RobustnessConfig, extract_copies, run_robustness
from saga.runs import make_provenance, save_weights, write_json

GENS = ("real", "syn-svd", "syn-latte")  # syn-latte has no SD-L class
FRACTIONS = {"train": 0.4, "val": 0.2, "test": 0.4}  # 5 videos per generator: 2 test, 1 val


def extract_cache(videos: Path, out: Path, weights: Path) -> FeatureCache:
    extract(ExtractConfig(videos=videos, out=out, taxonomy="synth", encoder="saga-tiny-vit", pretrained=str(weights),
                          frames=8, workers=0, device="cpu", split_fractions=FRACTIONS))
    return FeatureCache.open(out)


def save_run(folder: Path, cache: FeatureCache, level: str, classes: list[str]) -> Path:
    """An untrained stage-2 run at `level` (no accuracy is asserted, only what is scored and where)."""
    mcfg = ModelConfig(in_dim=cache.dim, d_model=16, depth=1, heads=2, max_frames=16, n_classes=len(classes),
                       dropout=0.0)
    torch.manual_seed(0)
    folder.mkdir()
    save_weights(folder / "model.safetensors", VideoTransformer(mcfg), epoch=1, metric=0.5)
    write_json(folder / "config.json", {"stage": 2, "level": level, "classes": classes, "frames": 4,
                                        "model": mcfg.to_dict(), "train": {"seed": 0}, "cache": str(cache.root)})
    write_json(folder / "provenance.json", make_provenance(cache, 0))
    (folder / "done.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("robust_split")
    videos = make_video_tree(root / "videos", per_class=5, generators=GENS)
    cache = extract_cache(videos, root / "cache", tiny_weights)
    return {"root": root, "videos": videos, "cache": cache.root,
            "gen": save_run(root / "gen", cache, "GEN-L", list(GENS)),
            "sdl": save_run(root / "sdl", cache, "SD-L", ["real", "SD 2.1"])}


def robustness(world: dict[str, Path], run: str, out: Path, split: str = "test",
               said: list[str] | None = None) -> dict:
    cfg = RobustnessConfig(run=world[run], cache=world["cache"], videos=world["videos"], out=out,
                           perturbations=parse_list("crf35"), split=split, workers=0)
    return run_robustness(cfg, say=(said if said is not None else []).append)


def test_another_split_into_the_same_out_gets_its_own_perturbed_cache(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rb"
    test = robustness(world, "gen", out, "test")
    val = robustness(world, "gen", out, "val")  # used to be refused, blamed on the encoder weights
    assert (test["n_videos"], val["n_videos"]) == (6, 3)
    assert [p["n"] for p in val["perturbations"]] == [3, 3]
    folders = out / "robustness"
    assert sorted(p.name for p in folders.iterdir()) == ["crf35", "crf35-val"]  # test keeps the bare name
    assert {r.split for r in FeatureCache.open(folders / "crf35" / "cache").records()} == {"test"}
    assert {r.split for r in FeatureCache.open(folders / "crf35-val" / "cache").records()} == {"val"}
    import json  # each split keeps its own results (the val run used to overwrite robustness.json)

    assert json.loads((out / "robustness.json").read_text())["split"] == "test"
    assert json.loads((out / "robustness-val.json").read_text())["split"] == "val"
    assert (out / "robustness-val.md").is_file()
    said: list[str] = []
    robustness(world, "gen", out, "test", said)  # the test split's folder is still reused
    assert any("extracted 0 new, 6 already cached" in line for line in said)


def test_a_refused_split_is_not_blamed_on_the_encoder(world: dict[str, Path], tmp_path: Path) -> None:
    clean = FeatureCache.open(world["cache"])
    out = tmp_path / "perturbed"
    FeatureCache.create_or_open(out, cache_provenance(clean.encoder_spec, clean.taxonomy, 0, {"test": 1.0}))
    cfg = RobustnessConfig(run=world["gen"], cache=None, videos=world["videos"], workers=0)
    with pytest.raises(SagaError) as refused:
        extract_copies(clean, world["videos"], out, "val", cfg, say=lambda line: None)
    message = str(refused.value)
    assert "the cache splits with" in message and "encoder" not in message and "weights" not in message


def save_tiny_weights(path: Path, seed: int) -> Path:
    import open_clip
    from safetensors.torch import save_file

    from saga.pipeline import encoders

    encoders._register_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model(encoders.TEST_ENCODER)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_an_encoder_that_changed_is_still_blamed(world: dict[str, Path], tmp_path: Path) -> None:
    weights = save_tiny_weights(tmp_path / "tiny.safetensors", seed=0)
    videos = make_video_tree(tmp_path / "videos", per_class=5, generators=("real",))
    clean = extract_cache(videos, tmp_path / "cache", weights)
    rows = [f"{clip.relative_to(videos)},real" for clip in sorted(videos.rglob("*.mp4"))]
    (videos / "labels.csv").write_text("\n".join(["path,generator", *rows]) + "\n")  # as perturb_videos writes
    save_tiny_weights(weights, seed=1)  # other weights at the recorded path: the cache's features are gone
    cfg = RobustnessConfig(run=world["gen"], cache=None, videos=videos, workers=0)
    with pytest.raises(SagaError, match="provide the weights the cache was extracted with"):
        extract_copies(clean, videos, tmp_path / "perturbed", "test", cfg, say=lambda line: None)


def test_only_videos_with_a_class_at_the_runs_level_are_scored_and_reencoded(world: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    said: list[str] = []
    result = robustness(world, "sdl", tmp_path / "rb", said=said)
    assert result["n_videos"] == 6  # 2 test videos per generator selected; syn-latte's 2 have no SD-L class
    for p in result["perturbations"]:
        assert p["n"] == 4 and p["failed"] == 0 and {m["n"] for m in p["levels"].values()} == {4}
    assert len(list((tmp_path / "rb" / "robustness" / "crf35" / "videos").rglob("*.mp4"))) == 4
    assert any(line.startswith("2 of 6 selected videos have no SD-L class") for line in said)
    table = (tmp_path / "rb" / "robustness.md").read_text()
    assert "6 videos selected, 4 of them with a class at SD-L" in table
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith(("| clean |", "| crf35 |"))]
    assert [row[-3] for row in rows] == ["4", "4"]  # the n column: videos scored, not videos selected


# -- `saga robustness RUN --cache OTHER` on a held-out cache: named apart, kept per cache, shown apart ---------------
def _cli(*args: str) -> str:
    """`saga ARGS` through CliRunner; stdout and stderr together."""
    from typer.testing import CliRunner

    from saga.cli import app

    res = CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def held_out(root: Path, name: str, per_class: int, weights: Path, same: bool = False) -> tuple[Path, FeatureCache]:
    """Videos and a cache of the run's encoder and sampling with another cache id (a held-out set), all test: new
    clips (other seeds), or with `same` the run's own clips again (what `make_video_tree` makes)."""
    videos = root / f"{name}-videos"
    if same:
        make_video_tree(videos, per_class=per_class, generators=GENS)
    else:
        for g, gen in enumerate(GENS):
            (videos / gen).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                write_clip(videos / gen / f"{gen}_{i}.mp4", n_frames=5 + 4 * i + g, seed=7000 + 100 * g + i)
    extract(ExtractConfig(videos=videos, out=root / name, taxonomy="synth", encoder="saga-tiny-vit",
                          pretrained=str(weights), frames=8, workers=0, device="cpu",
                          split_fractions={"train": 0.0, "val": 0.0, "test": 1.0}))
    return videos, FeatureCache.open(root / name)


def _robustness_cli(run: Path, cache: Path, videos: Path) -> str:
    return _cli("robustness", str(run), "--cache", str(cache), "--videos", str(videos), "--perturb", "crf35",
                "--workers", "0", "--device", "cpu")


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run's own robustness results and its own perturbed folder (copies, record, cache)."""
    own = [run / "robustness.json", run / "robustness.md",
           *sorted(p for p in (run / "robustness" / "crf35").rglob("*") if p.is_file())]
    return {str(p.relative_to(run)): p.read_bytes() for p in own}


def test_robustness_on_a_held_out_cache_of_the_run_s_own_videos_scores_only_those_it_never_saw(
        world: dict[str, Path], tmp_path: Path, tiny_weights: Path) -> None:
    """The same 15 videos extracted again, all in test: the clean and perturbed accuracies included the 9 the run
    was trained or validated on (every accuracy lifted), and those were re-encoded for nothing."""
    import json

    own = FeatureCache.open(world["cache"])
    videos, other = held_out(tmp_path, "again", 5, tiny_weights, same=True)
    unseen = {r.path for r in own.ok_records("test")}
    cfg = RobustnessConfig(run=world["gen"], cache=other.root, videos=videos, out=tmp_path / "rb",
                           perturbations=parse_list("crf35"), workers=0)
    with pytest.warns(UserWarning, match="9 of the 15 test videos are videos the run was trained or validated on"):
        result = run_robustness(cfg, say=lambda line: None)
    assert (result["n_videos"], result["seen_in_training"]["n"]) == (len(unseen), 9) == (6, 9)
    assert [p["n"] for p in result["perturbations"]] == [6, 6]
    tag = result["heldout"]
    copies = tmp_path / "rb" / "robustness" / f"crf35@{tag}" / "videos"
    assert {str(p.relative_to(copies)) for p in copies.rglob("*.mp4")} == unseen  # only those were re-encoded
    assert json.loads((tmp_path / "rb" / f"robustness@{tag}.json").read_text())["seen_in_training"]["n"] == 9
    assert "6 videos selected (9 more left out: the run was trained or validated on them)" in (
        tmp_path / "rb" / f"robustness@{tag}.md").read_text()


def test_robustness_on_held_out_caches_keeps_the_run_s_own_and_each_cache_s(world: dict[str, Path], tmp_path: Path,
                                                                           tiny_weights: Path) -> None:
    """`saga robustness RUN --cache OTHER` wrote robustness.json / .md and re-encoded robustness/<p>/ over the
    run's own: its own results were lost, a second held-out cache replaced the first, and the report showed
    the held-out accuracy as the run's."""
    import json

    from saga.explain.report import render_report

    run = save_run(tmp_path / "run", FeatureCache.open(world["cache"]), "GEN-L", list(GENS))
    _robustness_cli(run, world["cache"], world["videos"])
    own = _snapshot(run)
    assert json.loads(own["robustness.json"])["n_videos"] == 6 and "heldout" not in json.loads(own["robustness.json"])
    tags = []
    for name, per_class in (("seed 1", 3), ("b", 4)):
        videos, other = held_out(tmp_path, name, per_class, tiny_weights)
        said = _robustness_cli(run, other.root, videos)
        tag = f"{name.replace(' ', '_')}-{other.cache_id[:8]}"
        tags.append(tag)
        assert f"{run / f'robustness@{tag}.json'}, {run / f'robustness@{tag}.md'}" in said  # the files it wrote
        assert _snapshot(run) == own  # the run's own results, copies and perturbed cache byte-identical
    for tag, n in zip(tags, (9, 12)):  # each held-out cache kept, with its own copies
        held = json.loads((run / f"robustness@{tag}.json").read_text())
        assert (held["n_videos"], held["heldout"], held["perturbations"][1]["n"]) == (n, tag, n)
        assert "a held-out cache" in (run / f"robustness@{tag}.md").read_text()
        assert len(list(FeatureCache.open(run / "robustness" / f"crf35@{tag}" / "cache").ok_records())) == n
    assert sorted(p.name for p in (run / "robustness").iterdir()) == sorted(["crf35", *(f"crf35@{t}" for t in tags)])
    assert "extracted 0 new, 6 already cached" in _robustness_cli(run, world["cache"], world["videos"])
    html = render_report([run])  # the run's own table (6 videos), then one per held-out cache, apart
    own_at = html.index("<h3>Robustness</h3>")
    assert "test split (6 videos)" in html[own_at:html.index("<h3>Robustness on held-out cache")]
    for name, tag, n in (("seed 1", tags[0], 9), ("b", tags[1], 12)):
        at = html.index(f"<h3>Robustness on held-out cache {name} (")
        assert at > own_at and f"robustness@{tag}.json" in html[at:] and f"test split ({n} videos)" in html[at:]


def test_an_older_saga_s_held_out_robustness_under_the_own_name_is_labelled(world: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    """robustness.json an older saga filled from another cache is said to be of that cache, not the run's."""
    import json

    from saga.explain.report_openworld import beyond_sections, load_beyond

    run = save_run(tmp_path / "run", FeatureCache.open(world["cache"]), "GEN-L", list(GENS))
    levels = {"GEN-L": {"accuracy": 0.5, "ci": [0.2, 0.8], "n": 6, "macro_accuracy": 0.5}}
    rob = {"cache": "/data/seed1", "cache_id": "f" * 32, "split": "test", "n_videos": 6, "levels": ["GEN-L"],
           "perturbations": [{"name": "clean", "description": "", "n": 6, "failed": 0, "levels": levels}]}
    (run / "robustness.json").write_text(json.dumps(rob))
    assert "These results are of cache ffffffffffff, not the run's training cache" in beyond_sections(
        load_beyond(run, None), "run")
    rob["cache_id"] = FeatureCache.open(world["cache"]).cache_id  # the run's own: no note
    (run / "robustness.json").write_text(json.dumps(rob))
    assert "These results are of cache" not in beyond_sections(load_beyond(run, None), "run")
