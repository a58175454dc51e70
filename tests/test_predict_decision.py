"""`saga predict`'s class and probabilities (the class is evaluate's, the probabilities calibrated), and the
evidence each answer records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from saga.benchmark.videoio import write_video
from saga.pipeline.decode import decode_video
from saga.pipeline.sampling import SamplingPolicy

from conftest import write_clip


def test_predict_keeps_evaluates_class_when_calibration_ranks_window_averages_differently() -> None:
    """Three windows: logits (10, 0), (-3, 0), (-3, 0). The mean per-window softmax (evaluate's rule)
    picks class 1; calibration's softmax of the mean logits (1.33, 0) would pick class 0."""
    import torch

    from saga.openworld.calibration import Calibration
    from saga.openworld.extras import OpenWorld
    from saga.predict import decide

    windows = torch.tensor([[10.0, 0.0], [-3.0, 0.0], [-3.0, 0.0]])
    res = {"logits": windows.mean(0, keepdim=True).numpy(), "probs": windows.softmax(-1).mean(0, keepdim=True).numpy()}
    calibration = Calibration(temperature=2.0, split="val", n=10, nll_before=1.0, nll_after=0.9, ece_before=0.1,
                              ece_after=0.05, run_model="x", classes=["a", "b"])
    best, probs = decide(res, OpenWorld(info=None, taxonomy=None, calibration=calibration))  # type: ignore[arg-type]
    assert best == 1 and probs.argmax() == 0  # the class is evaluate's; the probabilities are calibrated
    assert decide(res, OpenWorld(info=None, taxonomy=None))[0] == 1  # type: ignore[arg-type]


def _evidence(path: Path, frames: int = 8) -> "object":
    from saga.predict import frame_evidence

    return frame_evidence(decode_video(path, SamplingPolicy(frames=16)), frames)


def test_degenerate_inputs_record_their_thin_evidence(tmp_path: Path) -> None:
    """A still image renamed .mp4, a 1-frame clip, a still and a 1x1 video were attributed as confidently as a
    real clip, with nothing in the output saying so. Each answer now records the real frames the model saw out of
    its window, their size and whether anything moved, and says why that is thin (not refused)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    image = np.kron(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), np.ones((8, 8, 1), dtype=np.uint8))  # 64x64
    Image.fromarray(image).save(tmp_path / "image.png")
    (tmp_path / "image.png").rename(tmp_path / "image_as.mp4")
    cases = {
        "image_as.mp4": None,
        "one_frame.mp4": write_video(tmp_path / "one_frame.mp4", image[None], 12),
        "still.mp4": write_video(tmp_path / "still.mp4", np.repeat(image[None], 20, 0), 12),  # P-frames refine it
        "tiny.gif": write_clip(tmp_path / "tiny.gif", 20, seed=1, size=(1, 1), codec="gif"),
        "three.mp4": write_clip(tmp_path / "three.mp4", 3, seed=2),
        "moving.mp4": write_clip(tmp_path / "moving.mp4", 20, seed=3),  # +3 grey levels a frame: a fade, not a still
    }
    got = {name: _evidence(tmp_path / name) for name in cases}
    assert {n: e.to_dict() for n, e in got.items()} == {
        "image_as.mp4": {"frames": 1, "of": 8, "size": [64, 64], "still": True},
        "one_frame.mp4": {"frames": 1, "of": 8, "size": [64, 64], "still": True},
        "still.mp4": {"frames": 8, "of": 8, "size": [64, 64], "still": True},
        "tiny.gif": {"frames": 8, "of": 8, "size": [1, 1], "still": False},
        "three.mp4": {"frames": 3, "of": 8, "size": [64, 48], "still": False},
        "moving.mp4": {"frames": 8, "of": 8, "size": [64, 48], "still": False},
    }
    warned = {name: e.warnings() for name, e in got.items()}
    assert warned["image_as.mp4"] == ["only 1 of 8 frames, one still image: no temporal evidence"]
    assert warned["still.mp4"] == ["no visible change between its 8 frames, a still: little or no temporal evidence"]
    assert warned["tiny.gif"] == ["frames of 1x1 px, under 32 px on a side: almost nothing for the encoder to see"]
    assert warned["three.mp4"] == ["only 3 of 8 frames: less temporal evidence than the model was trained on"]
    assert warned["moving.mp4"] == []


def test_thin_evidence_is_on_the_videos_own_lines_and_in_its_record(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Text: the prediction line says from how many frames of what size, a warning line follows when thin, and
    --tsig says from how many frames its nearest class signature comes (not evidence from one frame)."""
    from typer.testing import CliRunner

    import saga.explain.tsig
    import saga.predict
    from saga.cli import app
    from saga.predict import Evidence, Prediction

    thin = Evidence(1, 8, (1, 1), True)

    class OneFrame:
        def __init__(self, run: Path, **_: object) -> None:
            self.identity = {"run": str(run), "run_model": "ab" * 16, "run_finished": True}

        def predict(self, path: Path, tsig: bool = False) -> Prediction:
            return Prediction(str(path), level="GEN-L", predicted="syn-pika", confidence=0.35,
                              probabilities={"syn-pika": 0.35, "real": 0.65}, evidence=thin.to_dict(),
                              warnings=thin.warnings(), tsig=[1.0] * 8, **self.identity)

    monkeypatch.setattr(saga.predict, "Predictor", OneFrame)
    monkeypatch.setattr(saga.explain.tsig, "compare_video", lambda run, prof, png, name: ("syn-sora", Path(png)))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tsig.npz").write_bytes(b"")  # the run has class T-Sigs (compare_video stands in for them)
    (tmp_path / "one.mp4").write_bytes(b"x")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / "one.mp4"), "--tsig", "--out",
                                      str(tmp_path / "plots")])
    lines = result.stdout.splitlines()
    assert result.exit_code == 0 and lines[0].endswith("; from 1 of 8 frames, 1x1 px")
    assert lines[1] == ("  warning: only 1 of 8 frames, one still image: no temporal evidence; frames of 1x1 px, under "
                        "32 px on a side: almost nothing for the encoder to see; weigh this attribution accordingly")
    assert lines[-1].startswith("summary: 1 attributed (1 with thin evidence: see their warning lines), 0 failed")
    assert f"T-Sig of {tmp_path / 'one.mp4'} from 1 of 8 frames: nearest class signature syn-sora (not evidence: only " \
           "1 of 8 frames" in result.stderr


def test_real_from_an_sd_l_run_implies_nothing_and_says_why() -> None:
    """An SD-L run has no class for the generators without an SD backbone (Sora, Pika, …): it called a Sora clip
    "real" and printed "implies BIN-L real". "real" from such a run now implies nothing and carries a caveat naming
    the uncovered generators; an SD class still implies fake, and a GEN-L run's "real" is unchanged."""
    from types import SimpleNamespace

    from saga.predict import Predictor
    from saga.taxonomy import Taxonomy

    def predictor(level: str) -> Predictor:
        p = object.__new__(Predictor)
        p.taxonomy, p.info = Taxonomy.load("genvideo"), SimpleNamespace(level=level)
        p.uncovered = [g for g in p.taxonomy.generators if p.taxonomy.labels(g)[level] is None]
        return p

    sd = predictor("SD-L")
    assert sd.implied("real") == {} and "Sora" in sd.uncovered and "SD 1.4" not in sd.uncovered
    assert sd.caveat("real").startswith(f"this SD-L run has no class for the {len(sd.uncovered)} generators without one")
    assert sd.implied("SD 1.4")["BIN-L"] == "fake" and sd.caveat("SD 1.4") is None
    gen = predictor("GEN-L")
    assert gen.implied("real") == {"BIN-L": "real", "TASK-L": "real", "SD-L": "real", "TEAM-L": "real"}
    assert gen.caveat("real") is None
