"""`saga demo`: the whole method on the built-in benchmark, offline, on embedded defaults.

synth -> extract (offline EfficientNet-Lite0) -> stage 1 -> stage 2 at all five levels
-> evaluate -> T-Sigs -> t-SNE -> one HTML report. Every step reuses what a previous
run finished (the videos, the cache, finished runs), so a rerun is fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from saga.errors import SagaError
from saga.fileio import check_writable, read_json, write_json
from saga.progress import Passes, silent
from saga.taxonomy import LEVELS

if TYPE_CHECKING:
    from saga.demo_reuse import Ledger, State
    from saga.benchmark.synth import SynthConfig
    from saga.pipeline.extract import ExtractConfig
    from saga.train.attribute import AttributeConfig
    from saga.train.stage1 import Stage1Config

Log = Callable[[str], None]


@dataclass
class DemoConfig:
    out: Path = Path("work/demo")
    per_class: int = 12  # videos per generator
    real: int | None = None  # real videos (default 3 × per_class: real labels are the abundant ones)
    seed: int = 0
    frames: int = 16
    workers: int = 1
    device: str = "cpu"
    stage1_epochs: int = 15
    stage2_epochs: int = 30
    fraction: float = 0.5  # of each class's train videos: a few labelled videos per class on this small set
    floor: int = 5  # <= 5 labelled videos per class: the few-label regime stage 2 is for
    d_model: int = 128  # a CPU-sized transformer; real use keeps the default 256
    ablation: bool = False


def _real(cfg: DemoConfig) -> int:
    return cfg.real if cfg.real is not None else 3 * cfg.per_class


def _synth_config(cfg: DemoConfig) -> SynthConfig:
    from saga.benchmark.synth import SynthConfig

    return SynthConfig(videos_per_class=cfg.per_class, real_videos=_real(cfg), seed=cfg.seed, workers=2)


def _extract_config(cfg: DemoConfig, videos: Path) -> ExtractConfig:
    from saga.pipeline.encoders import DEMO_ENCODER, DEMO_PRETRAINED
    from saga.pipeline.extract import ExtractConfig

    return ExtractConfig(videos=videos, out=cfg.out / "cache", encoder=DEMO_ENCODER, pretrained=DEMO_PRETRAINED,
                         frames=cfg.frames, workers=cfg.workers, device=cfg.device, split_seed=cfg.seed,
                         split_fractions={"train": 0.5, "val": 0.2, "test": 0.3})


def _stage1_config(cfg: DemoConfig) -> Stage1Config:
    from saga.train.stage1 import Stage1Config

    return Stage1Config(epochs=cfg.stage1_epochs, seed=cfg.seed, device=cfg.device, patience=0, d_model=cfg.d_model)


def _attribute_config(cfg: DemoConfig, level: str) -> AttributeConfig:
    from saga.train.attribute import AttributeConfig

    return AttributeConfig(level=level, fraction=cfg.fraction, floor=cfg.floor, epochs=cfg.stage2_epochs,
                           seed=cfg.seed, device=cfg.device, loss="ce+hnm")


def ablation_seeds(cfg: DemoConfig) -> tuple[int, ...]:
    """--ablation's three seeds follow --seed, as the benchmark, the split and every other run do."""
    return tuple(cfg.seed + i for i in range(3))


def check_options(cfg: DemoConfig) -> None:
    """Every option's one-line error before minutes of generating videos (a bad --device, --workers or
    --seed used to surface only once the whole benchmark had been rendered)."""
    from saga.distributed import resolve_device

    resolve_device(cfg.device)
    for config in (_synth_config(cfg), _extract_config(cfg, cfg.out / "videos"), _stage1_config(cfg),
                   *(_attribute_config(cfg, level) for level in LEVELS)):
        config.check()
    check_writable(cfg.out)


def _synth(cfg: DemoConfig, log: Log, progress: Passes = silent) -> Path:
    from saga.benchmark.synth import generate

    videos = cfg.out / "videos"
    stamp = videos / "demo.json"
    real = _real(cfg)
    wanted = {"per_class": cfg.per_class, "real": real, "seed": cfg.seed}
    made = read_json(stamp, corrupt=f"; delete {cfg.out} or pick another --out") if stamp.is_file() else None
    if made == wanted and (videos / "labels.csv").is_file():
        log(f"videos: reusing {videos}")
        return videos
    if made is not None:
        raise SagaError(f"{videos}: holds a benchmark made with other settings; delete {cfg.out} or pick --out")
    log(f"videos: generating {real} real + {cfg.per_class} per generator into {videos}")
    with progress("synth") as update:
        generate(videos, _synth_config(cfg), update)
    write_json(stamp, wanted)
    return videos


def _extract(cfg: DemoConfig, videos: Path, log: Log, progress: Passes) -> Path:
    from saga.pipeline.extract import extract

    config = _extract_config(cfg, videos)
    with progress("extract", frames=True) as update:
        summary = extract(config, progress=update)
    log(f"cache: {summary.ok} videos extracted, {summary.skipped} reused, {len(summary.failures)} failed "
        f"({summary.timings.wall:.0f}s)")
    return config.out


def _tsne_or_skip(run: Path, cache: Path, level: str, device: str, log: Log) -> bool:
    """A demo too small for a t-SNE (a few --per-class) still finishes, its report without that plot (False)."""
    from saga.explain.tsne import run_tsne

    try:
        run_tsne(run, cache, color_by="GEN-L" if level != "GEN-L" else None, device=device)
    except SagaError as exc:
        log(f"{level}: t-SNE skipped ({exc})")
        return False
    return True


def _level_products(cfg: DemoConfig, cache: Path, run: Path, level: str, state: State, log: Log,
                    ledger: Ledger) -> dict[str, Any]:
    """Calibration, test metrics, T-Sigs and t-SNE of one finished level run: each reused while current."""
    from saga import demo_reuse as reuse
    from saga.explain.tsig import run_tsigs
    from saga.openworld.api import calibrate_run

    if reuse.calibration_current(run, cache, state):
        ledger.note(True, f"{level} calibration")
    else:
        calibrate_run(run, cache, device=cfg.device, report_split=None)  # as `saga attribute` does
        ledger.note(False, f"{level} calibration")
    metrics = reuse.evaluation(run, cache, state, cfg.device, ledger, f"{level} evaluation")
    if reuse.tsigs_current(run, state):
        ledger.note(True, f"{level} T-Sigs")
    else:
        run_tsigs(run, cache, device=cfg.device)
        ledger.note(False, f"{level} T-Sigs")
    if reuse.tsne_current(run, state):
        ledger.note(True, f"{level} t-SNE")
    elif _tsne_or_skip(run, cache, level, cfg.device, log):
        ledger.note(False, f"{level} t-SNE")
    return metrics


def _report(run_dirs: list[Path], out: Path, ablation: Path | None, ledger: Ledger) -> Path:
    """The HTML report, rebuilt only when a file it is built from (or saga's code) changed or it is missing."""
    from saga import demo_reuse as reuse
    from saga.explain.report import build_report

    inputs = reuse.report_inputs([*run_dirs, *([ablation.parent] if ablation else [])])
    if reuse.report_current(out, inputs):
        ledger.note(True, "report")
        return out
    ledger.note(False, "report")
    return build_report(run_dirs, out, ablation, inputs=inputs)


def run_demo(cfg: DemoConfig, log: Log = print, progress: Passes = silent) -> dict[str, Any]:
    """Run (or finish) the demo; returns {level: metrics}, the report path and the ablation's failed cells
    (`ablation_failed`: the caller says so and exits 1, as `saga ablate` does). `progress` opens a display for
    generating the videos (`synth`, minutes) and one for extracting them (`extract`). A rerun reuses every
    product still current (`saga.demo_reuse`) and ends with lines naming what it reused and what it made."""
    from saga import demo_reuse as reuse
    from saga.train.attribute import AttributeConfig, train_attribution
    from saga.train.stage1 import train_stage1

    check_options(cfg)  # before minutes of generating videos
    cache = _extract(cfg, _synth(cfg, log, progress), log, progress)
    state, ledger = reuse.cache_state(cache), reuse.Ledger()
    runs = cfg.out / "runs"
    stage1 = reuse.trained(train_stage1, cache, runs / "stage1", _stage1_config(cfg), ledger=ledger,
                           what="stage-1 run")
    log(f"stage 1: {stage1}")
    results: dict[str, Any] = {}
    run_dirs = [stage1]
    for level in LEVELS:
        run = reuse.trained(train_attribution, cache, runs / level.lower(), _attribute_config(cfg, level),
                            from_run=stage1, ledger=ledger, what=f"{level} run")
        results[level] = _level_products(cfg, cache, run, level, state, log, ledger)
        run_dirs.append(run)
        log(f"{level}: accuracy {100 * results[level]['accuracy']:.1f}% "
            f"(macro {100 * results[level]['macro_accuracy']:.1f}%)")
    reuse.evaluation(stage1, cache, state, cfg.device, ledger, "stage-1 evaluation")
    ablation, failed = None, []
    if cfg.ablation:
        from saga.ablate import run_ablation

        summary = run_ablation(cache, stage1, runs / "ablation", AttributeConfig(
            fraction=cfg.fraction, floor=cfg.floor, epochs=cfg.stage2_epochs, device=cfg.device,
            d_model=cfg.d_model), seeds=ablation_seeds(cfg), progress=lambda event: log(event.message))
        failed = summary["failed"]  # the cells that failed: in the table, and said by the caller after the report
        ablation = runs / "ablation" / "ablation.json"
    report = _report(run_dirs, cfg.out / "report.html", ablation, ledger)
    for line in ledger.lines():
        log(line)
    return {"levels": results, "report": report, "runs": run_dirs, "ablation_failed": failed}
