"""Re-encoded copies: a changed source is re-copied, copy names never collide, odd sizes are cropped
(not resampled), an audio-only file is one clear error, warnings are one line (QA defects 1-4).

CPU, tiny and deterministic: conftest clips, the tiny test encoder for the one end-to-end test.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import make_video_tree, write_clip
from test_robustness import untrained_run
from saga.cache.manifest import AUGMENTED, OK, VideoRecord, copy_name, file_fingerprint, source_key
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.pipeline.extract import ExtractConfig, extract
from saga.pipeline.inputs import parse_labels
from saga.robustness.augment import augment_cache
from saga.robustness.copies import RECORD
from saga.robustness.perturb import apply, output_size, parse, parse_list
from saga.robustness.runner import RobustnessConfig, perturb_videos, run_robustness
from saga.taxonomy import Taxonomy


def record(videos: Path, rel: str, generator: str = "real") -> VideoRecord:
    """What a cache records for videos/rel now (its fingerprint included)."""
    size, mtime = file_fingerprint(videos / rel)
    return VideoRecord(rel, size, mtime, OK, generator, {}, "test")


def width_frames(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as c:
        return c.streams.video[0].width, sum(1 for _ in c.decode(video=0))


def test_a_changed_source_gets_its_copy_redone(tmp_path: Path) -> None:
    videos, folder = tmp_path / "v", tmp_path / "copies"
    write_clip(videos / "a.mp4", n_frames=6, seed=1, size=(32, 48))
    p = parse("crf23")
    perturb_videos(p, [record(videos, "a.mp4")], videos, folder, print)
    assert width_frames(folder / "a.mp4") == (48, 6)
    stamp = (folder / "a.mp4").stat().st_mtime_ns
    perturb_videos(p, [record(videos, "a.mp4")], videos, folder, print)
    assert (folder / "a.mp4").stat().st_mtime_ns == stamp  # unchanged source: the copy is reused
    write_clip(videos / "a.mp4", n_frames=9, seed=2, size=(48, 64))  # the same name, another video
    perturb_videos(p, [record(videos, "a.mp4")], videos, folder, print)
    assert width_frames(folder / "a.mp4") == (64, 9)
    entry = [json.loads(line) for line in (folder / RECORD).read_text().splitlines()][-1]
    assert (entry["source"], entry["size"]) == ("a.mp4", (videos / "a.mp4").stat().st_size)


def test_an_older_copy_without_a_record_is_redone_once(tmp_path: Path) -> None:
    videos, folder = tmp_path / "v", tmp_path / "copies"
    write_clip(videos / "a.mp4", n_frames=6, seed=1, size=(32, 48))
    write_clip(folder / "a.mp4", n_frames=3, seed=9, size=(16, 16))  # an older saga's copy of another video
    p = parse("crf23")
    perturb_videos(p, [record(videos, "a.mp4")], videos, folder, print)
    assert width_frames(folder / "a.mp4") == (48, 6)
    stamp = (folder / "a.mp4").stat().st_mtime_ns
    perturb_videos(p, [record(videos, "a.mp4")], videos, folder, print)
    assert (folder / "a.mp4").stat().st_mtime_ns == stamp


def scored_run(root: Path, weights: Path) -> tuple[Path, Path, Path]:
    """(videos, cache, run): 2 test videos per generator and an untrained GEN-L run saved by hand."""
    gens = ("real", "syn-svd", "syn-latte")
    videos = make_video_tree(root / "v", per_class=2, generators=gens)
    extract(ExtractConfig(videos=videos, out=root / "cache", taxonomy="synth", encoder="saga-tiny-vit",
                          pretrained=str(weights), frames=4, workers=0, device="cpu",
                          split_fractions={"train": 0.0, "val": 0.0, "test": 1.0}))
    cache = FeatureCache.open(root / "cache")
    return videos, cache.root, untrained_run(cache, gens, root / "run")


def test_a_video_the_cache_did_not_extract_is_not_scored_and_named_in_one_line(tmp_path: Path,
                                                                                tiny_weights: Path) -> None:
    videos, cache, run = scored_run(tmp_path, tiny_weights)
    write_clip(videos / "real" / "real_0.mp4", n_frames=9, seed=42, size=(32, 48))  # replaced, not re-extracted
    said: list[str] = []
    cfg = RobustnessConfig(run=run, cache=cache, videos=videos, out=tmp_path / "rb",
                           perturbations=parse_list("crf28"), workers=0)
    p = run_robustness(cfg, say=said.append)["perturbations"][1]
    lines = [x for x in said if "real_0.mp4" in x]
    assert (p["n"], p["failed"]) == (5, 1) and len(lines) == 1 and "saga extract" in lines[0]
    other = make_video_tree(tmp_path / "other", per_class=2, generators=("real", "syn-svd", "syn-latte"))
    for i, clip in enumerate(sorted(other.rglob("*.mp4"))):  # other videos: another size (same bytes would pass)
        write_clip(clip, n_frames=20 + i, seed=50 + i, size=(32, 48))
    with pytest.raises(SagaError, match="none of the 6 videos is the file the cache"):  # same names, another folder
        run_robustness(replace(cfg, videos=other), say=said.append)


TRICKY = ["x.avi", "x.avi.mp4", "x.mp4", "x", "x.MP4", "X.mp4", "/x.mp4", "../x.mp4", "_up_/x.mp4", "x.mp4.mp4",
          "%/x.mp4", "%25/x.mp4", "a/%2F/x.mp4", "clip.v2.mp4", "clip.v2", "d/x.webm", "d/x.webm.mp4", "d/x.ts"]


def test_copy_names_never_collide_and_older_names_still_map_back() -> None:
    names = [copy_name(p) for p in TRICKY]
    assert len(set(names)) == len(TRICKY) and all(n.lower().endswith(".mp4") for n in names)
    assert all(not n.startswith(("/", "../")) and "/../" not in n for n in names)
    for older, source in [("x.avi.mp4", "x.avi"), ("x.mp4", "x.mp4"), ("x.MP4", "x.MP4"), ("d/x.webm.mp4", "d/x.webm"),
                          ("clip.v2.mp4", "clip.v2.mp4"), ("x.mp4.mp4", "x.mp4.mp4")]:
        assert source_key(f"{AUGMENTED}crf28/{older}") == (True, source_key(source)[1])  # an older saga's copy
    for source in TRICKY:
        assert source_key(f"{AUGMENTED}crf28/{copy_name(source)}")[1] == source_key(source)[1]


def test_colliding_sources_get_two_copies_and_a_valid_labels_csv(tmp_path: Path) -> None:
    videos, folder = tmp_path / "v", tmp_path / "copies"
    write_clip(videos / "x.avi", n_frames=4, seed=1, codec="mjpeg")
    write_clip(videos / "x.avi.mp4", n_frames=5, seed=2)
    done = perturb_videos(parse("crf28"), [record(videos, "x.avi"), record(videos, "x.avi.mp4", "syn-svd")], videos,
                          folder, print)
    assert sorted(done.values()) == ["x.avi", "x.avi.mp4"] and len(done) == 2
    items = parse_labels((folder / "labels.csv").read_text(), Taxonomy.load("synth"))  # "listed twice" before
    assert {i.rel: i.generator for i in items} == {copy_name("x.avi"): "real", copy_name("x.avi.mp4"): "syn-svd"}
    assert [width_frames(folder / c)[1] for c in sorted(done, key=done.get)] == [4, 5]


def test_augment_handles_colliding_names_and_redoes_a_changed_train_video(tmp_path: Path, tiny_weights: Path) -> None:
    videos, cache = tmp_path / "v", tmp_path / "cache"
    write_clip(videos / "x.avi", n_frames=4, seed=1, codec="mjpeg")
    write_clip(videos / "x.avi.mp4", n_frames=5, seed=2)
    write_clip(videos / "y.mp4", n_frames=6, seed=3, size=(32, 48))
    (videos / "labels.csv").write_text("path,generator\nx.avi,real\nx.avi.mp4,syn-svd\ny.mp4,real\n")
    cfg = ExtractConfig(videos=videos, out=cache, taxonomy="synth", encoder="saga-tiny-vit",
                        pretrained=str(tiny_weights), frames=4, workers=0, device="cpu",
                        split_fractions={"train": 1.0, "val": 0.0, "test": 0.0})
    extract(cfg)
    assert augment_cache(cfg, parse_list("crf28"), say=print).ok == 3  # aborted with "listed twice" before
    write_clip(videos / "y.mp4", n_frames=9, seed=4, size=(48, 64))  # the dataset replaces y.mp4
    extract(cfg)
    rerun = augment_cache(cfg, parse_list("crf28"), say=print)
    assert (rerun.ok, rerun.skipped) == (1, 2)  # only y.mp4's copy is redone and re-extracted
    copy = cache / AUGMENTED / "crf28" / "y.mp4"
    assert width_frames(copy) == (64, 9)
    rec = next(r for r in FeatureCache.open(cache).records() if r.path == f"{AUGMENTED}crf28/y.mp4")
    assert rec.ok and rec.fingerprint() == file_fingerprint(copy)


def _stripes(path: Path, w: int, h: int) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=12)
        s.width, s.height, s.pix_fmt = w, h, "yuv444p"
        img = np.zeros((h, w, 3), np.uint8)
        img[:, ::2] = 255  # 1-pixel vertical stripes: what a resampling blurs
        for _ in range(2):
            c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(s.encode())
    return path


@pytest.mark.parametrize("name", ["crf18", "fps0.5"])
def test_an_odd_sized_video_is_cropped_to_even_not_resampled(tmp_path: Path, name: str) -> None:
    assert output_size(parse(name), 853, 481) == (852, 480, 852, 480)
    copy = apply(parse(name), _stripes(tmp_path / "odd.mkv", 33, 25), tmp_path / "copy.mp4")
    with av.open(str(copy)) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    assert frame.shape[:2] == (24, 32)
    assert np.abs(np.diff(frame[:, :, 0], axis=1)).mean() > 200  # the stripes survive (resampled: ~119)


def test_an_audio_only_file_is_one_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "audio.mp4"
    with av.open(str(src), "w") as c:
        a = c.add_stream("aac", rate=44100)
        a.layout = "mono"
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            c.mux(a.encode(frame))
        c.mux(a.encode())
    with pytest.raises(SagaError, match=r"audio\.mp4: no video stream \(audio-only or data file\)"):
        apply(parse("crf28"), src, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def _warn_and_stop(*args: object, **kwargs: object) -> None:
    warnings.warn("a library's warning", UserWarning)
    raise SagaError("stop")


def test_predict_and_robustness_print_warnings_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import saga.predict
    import saga.robustness.runner
    from saga.commands.predict_cmds import predict
    from saga.commands.robustness_cmds import robustness

    monkeypatch.setattr(saga.predict, "Predictor", _warn_and_stop)
    monkeypatch.setattr(saga.robustness.runner, "run_robustness", _warn_and_stop)
    (tmp_path / "a.mp4").write_bytes(b"")
    for call in (lambda: predict(tmp_path, [tmp_path / "a.mp4"]), lambda: robustness(tmp_path, tmp_path, device="cpu")):
        with pytest.raises(SagaError, match="stop"):
            call()
        err = capsys.readouterr().err
        assert "warning: a library's warning" in err and "warnings.warn" not in err


# --- QA cachetools 3: robustness.json records the weights and the draw; the report hides another model's -----------

def test_robustness_records_weights_and_draw_and_the_report_hides_it_after_a_retrain(tmp_path: Path,
                                                                                      tiny_weights: Path) -> None:
    from saga.explain.metrics import run_weights
    from saga.explain.report_openworld import beyond_sections, load_beyond
    from saga.runs import cache_digest

    videos, cache, run = scored_run(tmp_path, tiny_weights)
    cfg = RobustnessConfig(run=run, cache=cache, videos=videos, perturbations=parse_list("crf28"), workers=0,
                           limit_per_class=1, seed=3)
    run_robustness(cfg, say=print)
    saved = json.loads((run / "robustness.json").read_text())
    assert saved["run_model"] == run_weights(run) and (saved["limit_per_class"], saved["seed"]) == (1, 3)
    assert saved["cache_digest"] == cache_digest(FeatureCache.open(cache)) and saved["n_videos"] == 3
    shown = beyond_sections(load_beyond(run, None), "run")
    assert "<h3>Robustness</h3>" in shown and "seed 3" in shown and "at most 1 videos per class" in shown
    (run / "model.safetensors").write_bytes(b"the weights of a retrain into the same folder")
    beyond = load_beyond(run, None)
    assert beyond["robustness"] is None and [f for f, _ in beyond["stale"]] == ["robustness.json"]
    shown = beyond_sections(beyond, "run")
    assert "<h3>Robustness</h3>" not in shown and "robustness.json: made with other weights" in shown


# --- QA cachetools 6: every option is checked before any video is re-encoded ------------------------------------

@pytest.mark.parametrize("option, value, said", [("batch_size", 0, "--batch-size must be >= 1, got 0"),
                                                 ("workers", -1, "--workers must be >= 0"),
                                                 ("limit_per_class", 0, "--limit-per-class must be >= 1")])
def test_a_bad_number_is_refused_before_any_work(tmp_path: Path, option: str, value: int, said: str) -> None:
    (tmp_path / "v").mkdir()
    cfg = RobustnessConfig(run=tmp_path / "run", cache=None, videos=tmp_path / "v", out=tmp_path / "out",
                           perturbations=parse_list("crf28"), **{option: value})
    with pytest.raises(SagaError, match=said):
        run_robustness(cfg, say=print)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, said", [(",", "names no perturbation"), ("", "names no perturbation"),
                                        (" , ", "names no perturbation"),
                                        ("crf28,crf28.0", "crf28 and crf28.0 are the same perturbation"),
                                        ("crop0.5,crop0.50", "the same perturbation")])
def test_an_empty_or_doubled_perturb_list_is_one_line(text: str, said: str) -> None:
    with pytest.raises(SagaError, match=said):
        parse_list(text)


def test_the_written_line_prints_a_bracketed_folder_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`saga robustness --out 'g[/b]'` printed its `written:` line as rich markup: a MarkupError traceback after
    robustness.json was saved (and `[x]` in a folder name vanished)."""
    import saga.robustness.evaluate
    import saga.robustness.runner
    from typer.testing import CliRunner

    from saga.cli import app

    monkeypatch.setattr(saga.robustness.runner, "run_robustness", lambda cfg, say, progress, steps=None: {})
    monkeypatch.setattr(saga.robustness.evaluate, "markdown", lambda result: "| table |")
    for out in (tmp_path / "g[" / "b]", tmp_path / "x [y]"):
        result = CliRunner().invoke(app, ["robustness", str(tmp_path), "--videos", str(tmp_path), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert f"written: {out / 'robustness.json'}, {out / 'robustness.md'}" in result.output
