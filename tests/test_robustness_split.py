"""`saga robustness` per split and per scored video: another --split into the same --out works, a refused
append is blamed on its real cause, and only videos with a class at the run's level are scored and re-encoded.

CPU, tiny and deterministic: tiny clips from conftest, the tiny test encoder, untrained runs saved by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import make_video_tree
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
