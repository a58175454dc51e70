"""A `local-dir:` encoder typed as a relative path is found again from any working folder: caches and runs record
the absolute folder, `saga predict` and `saga robustness` rebuild it from there (older records, which kept the
path as typed, from their original folder too); a moved folder is one line naming it and the fix.

CPU and offline: the tiny open_clip ViT saved as a folder (test_encoder_fixes), tiny clips from conftest.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import make_video_tree, run_saga
from saga.cache.provenance import EncoderSpec
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.pipeline.encoders import load_encoder
from saga.pipeline.extract import ExtractConfig, extract
from saga.predict import run_encoder
from saga.robustness.runner import RobustnessConfig, extract_copies
from test_encoder_fixes import _model_dir, _spec, _tiny_state
from test_robustness import untrained_run

TYPED = "local-dir:models/ldm"


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A: where the model folder models/ldm lives (and saga first ran); B: another working folder. cwd = A."""
    a, b = tmp_path / "A", tmp_path / "B"
    _model_dir(a / "models" / "ldm", {})
    b.mkdir()
    monkeypatch.chdir(a)
    return a, b


def _run(spec: EncoderSpec, where: Path) -> SimpleNamespace:
    return SimpleNamespace(encoder=spec, path=where / "run")  # what run_encoder reads of a RunInfo


def test_a_relative_local_dir_is_recorded_as_its_folder_and_loads_from_any_cwd(
        folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = folders
    spec = _spec(load_encoder(TYPED, None))
    assert spec.encoder == f"local-dir:{(a / 'models' / 'ldm').resolve()}" and spec.pretrained == spec.encoder[10:]
    monkeypatch.chdir(b)
    assert run_encoder(_run(spec, b), "cpu").weights_fingerprint == spec.weights_fingerprint
    # a run recorded by an older saga (the typed relative path) loads from its recorded folder too
    older = EncoderSpec.from_dict({**spec.to_dict(), "encoder": TYPED})
    assert run_encoder(_run(older, b), "cpu").weights_fingerprint == spec.weights_fingerprint


def test_an_older_run_still_loads_from_its_original_cwd(folders: tuple[Path, Path]) -> None:
    a, _ = folders  # the project moved: the recorded absolute folder is gone, the typed path still holds
    spec = _spec(load_encoder(TYPED, None))
    older = EncoderSpec.from_dict({**spec.to_dict(), "encoder": TYPED, "pretrained": "/moved/away/models/ldm"})
    assert run_encoder(_run(older, a), "cpu").weights_fingerprint == spec.weights_fingerprint


def test_a_moved_local_dir_is_one_line_naming_it_and_the_fix(folders: tuple[Path, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = folders
    spec = _spec(load_encoder(TYPED, None))
    shutil.move(a / "models", b / "models")
    monkeypatch.chdir(b)  # where models/ldm now is: a run recorded by this saga does not take it silently
    with pytest.raises(SagaError) as gone:
        run_encoder(_run(spec, b), "cpu")
    message = str(gone.value)
    assert "\n" not in message and f"{a}/models/ldm is gone" in message, message
    assert "--encoder local-dir:NEWPATH" in message, message
    moved = run_encoder(_run(spec, b), "cpu", f"local-dir:{b}/models/ldm")  # the fix: its new place, checked
    assert moved.weights_fingerprint == spec.weights_fingerprint


def test_robustness_extracts_with_the_caches_local_dir_from_any_cwd(folders: tuple[Path, Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = folders
    videos = make_video_tree(a / "videos", per_class=2, generators=("real",))
    extract(ExtractConfig(videos=videos, out=a / "cache", taxonomy="synth", encoder=TYPED, pretrained=None,
                          frames=8, workers=0, device="cpu"))
    rows = [f"{clip.relative_to(videos)},real" for clip in sorted(videos.rglob("*.mp4"))]
    (videos / "labels.csv").write_text("\n".join(["path,generator", *rows]) + "\n")  # as perturb_videos writes
    clean = FeatureCache.open(a / "cache")
    split = next(r.split for r in clean.ok_records())
    cfg = RobustnessConfig(run=a / "run", cache=None, videos=videos, workers=0)
    monkeypatch.chdir(b)
    copies = extract_copies(clean, videos, b / "perturbed", split, cfg, say=lambda line: None)
    assert len(copies.ok_records(split)) == len(clean.ok_records()) > 0  # every video, in one split
    shutil.rmtree(a / "models")
    with pytest.raises(SagaError, match=rf"its encoder folder {a}/models/ldm is gone .*--encoder local-dir:NEWPATH"):
        extract_copies(clean, videos, b / "perturbed2", split, cfg, say=lambda line: None)


def test_robustness_takes_the_moved_encoder_folder_checked_against_the_run(folders: tuple[Path, Path]) -> None:
    """`saga robustness --encoder local-dir:NEWPATH`, as `saga predict` takes it: the weights checked first."""
    a, b = folders
    videos = make_video_tree(a / "videos", per_class=2, generators=("real", "syn-svd"))
    extract(ExtractConfig(videos=videos, out=a / "cache", taxonomy="synth", encoder=TYPED, pretrained=None,
                          frames=8, workers=0, device="cpu", split_fractions={"train": 0.0, "val": 0.0, "test": 1.0}))
    run = untrained_run(FeatureCache.open(a / "cache"), ("real", "syn-svd"), a / "run")
    args = ["robustness", str(run), "--videos", str(videos), "--perturb", "crf28", "--workers", "0", "--device", "cpu"]
    assert run_saga(*args, check=True).returncode == 0  # a perturbed cache made at the old place
    shutil.move(a / "models", b / "models")
    gone = run_saga(*args)
    assert gone.returncode == 2 and "--encoder local-dir:NEWPATH" in gone.stderr, gone.stderr
    assert f"{a}/models/ldm is gone" in gone.stderr and "put the folder back" not in gone.stderr
    other = _model_dir(b / "other", {}, _tiny_state(seed=1))  # the same model with other weights: refused
    wrong = run_saga(*args, "--encoder", f"local-dir:{other}")
    assert wrong.returncode == 2 and "encoder mismatch" in wrong.stderr and "weights_fingerprint" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr  # refused before any video is re-encoded
    moved = run_saga(*args, "--encoder", f"local-dir:{b}/models/ldm", check=True)
    assert "extracted 0 new, 4 already cached" in moved.stderr, moved.stderr  # the old place's cache is reused
    assert (run / "robustness.json").is_file()
