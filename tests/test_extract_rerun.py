"""Phase 1 reruns: torn logs, a full disk, relabelled videos, split settings, an imported cache, bad values."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import make_video_tree, run_saga, write_clip
from saga.cache.export import export_h5, import_h5
from saga.cache.manifest import append_split_plan, read_split_plan
from saga.cache.store import PARTS_LOG, FeatureCache
from saga.errors import SagaError, WriteError
from saga.fileio import LineLog, append_lines
from saga.pipeline import decode, reader
from saga.pipeline.decoder_audit import AUDIT_FILE, audited_rule
from saga.pipeline.extract import extract
from saga.pipeline.inputs import discover
from saga.taxonomy import Taxonomy
from test_extract import config


def clean(cache_dir: Path) -> None:
    """The cache passes `saga cache verify`: no structural error or warning, every checksum right."""
    cache = FeatureCache.open(cache_dir)
    assert cache.check_structure() == ([], []) and cache.verify() == []


# --- append-only logs ------------------------------------------------------------------------------------------

def test_an_append_cuts_a_torn_last_line_instead_of_gluing_to_it(tmp_path: Path) -> None:
    plan = tmp_path / "splits.jsonl"
    append_split_plan(plan, {"a.mp4": ("real", "train")})
    with open(plan, "ab") as fh:
        fh.write(b'{"path": "b.mp4", "gener')  # a write killed mid-line
    assert read_split_plan(plan) == {"a.mp4": ("real", "train")}  # never committed
    append_split_plan(plan, {"c.mp4": ("real", "test")})
    assert read_split_plan(plan) == {"a.mp4": ("real", "train"), "c.mp4": ("real", "test")}
    long = tmp_path / "long.jsonl"
    long.write_bytes(b"x" * 200_000 + b"\n" + b"y" * 150_000)  # the last newline several blocks back
    append_lines(long, "z\n")
    assert long.read_bytes() == b"x" * 200_000 + b"\nz\n"
    no_newline = tmp_path / "none.jsonl"
    no_newline.write_bytes(b"torn")
    append_lines(no_newline, "first\n")
    assert no_newline.read_bytes() == b"first\n"


def test_a_failed_append_leaves_the_file_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.jsonl"
    append_lines(path, "one\n")
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        if len(data) > 2:
            return real_write(fd, bytes(data[:2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    log = LineLog(path)
    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(WriteError, match=f"{tmp_path}: the disk is full .* while writing log.jsonl"):
        log.append("two\nthree\n")
    monkeypatch.undo()
    log.close()
    assert path.read_bytes() == b"one\n"



def test_an_append_never_cuts_another_writers_line_still_being_written(tmp_path: Path) -> None:
    """Ranks seal into one parts.jsonl at once: rank B's torn-tail cut must wait for rank A's line."""
    path = tmp_path / "parts.jsonl"
    append_lines(path, "one\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    fcntl.flock(fd, fcntl.LOCK_EX)  # rank A, mid-append (what LineLog.append holds)
    os.write(fd, b"rank-a")
    other = threading.Thread(target=append_lines, args=(path, "rank-b\n"))
    other.start()
    other.join(0.3)
    os.write(fd, b" line\n")
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    other.join()
    assert path.read_text().splitlines() == ["one", "rank-a line", "rank-b"]


# --- extraction reruns -----------------------------------------------------------------------------------------

def test_a_cache_with_torn_logs_takes_more_videos_and_stays_valid(tmp_path: Path, tiny_weights: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    cfg = config(videos, tmp_path / "c", tiny_weights)
    extract(cfg)
    for name in ("splits.jsonl", PARTS_LOG):  # both killed mid-line (or cut short by a full disk)
        with open(tmp_path / "c" / name, "ab") as fh:
            fh.write(b'{"path":')
    for n in range(2):  # the first append cuts the torn lines; the second used to find them glued and corrupt
        write_clip(videos / "real" / f"new{n}.mp4", n_frames=9, seed=50 + n)
        assert extract(cfg).ok == 1
    clean(tmp_path / "c")


def test_a_full_disk_is_one_line_and_the_rerun_completes_the_cache(tmp_path: Path, tiny_weights: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=2)
    cfg = config(videos, tmp_path / "c", tiny_weights)
    real_write, writes = os.write, []

    def fill_up(fd: int, data: bytes) -> int:  # the disk fills after two record commits
        writes.append(fd)
        if len(writes) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", fill_up)
    with pytest.raises(WriteError, match="the disk is full"):
        extract(cfg)
    monkeypatch.undo()
    summary = extract(cfg)
    assert summary.ok + summary.skipped == 6 and summary.ok < 6  # what was committed is kept
    clean(tmp_path / "c")


def test_a_relabelled_video_is_extracted_again_with_its_new_label(tmp_path: Path, tiny_weights: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=2)
    rows = [f"{p.relative_to(videos)},{p.parent.name}" for p in sorted(videos.glob("*/*.mp4"))]
    (videos / "labels.csv").write_text("path,generator\n" + "\n".join(rows) + "\n")
    cfg = config(videos, tmp_path / "c", tiny_weights)
    extract(cfg)
    (videos / "labels.csv").write_text((videos / "labels.csv").read_text().replace(
        "real/real_0.mp4,real", "real/real_0.mp4,syn-svd"))
    again = extract(cfg)
    assert (again.ok, again.skipped) == (1, 5)
    record = {r.path: r for r in FeatureCache.open(tmp_path / "c").records()}["real/real_0.mp4"]
    assert record.generator == "syn-svd" and record.labels["BIN-L"] == "fake"
    clean(tmp_path / "c")


def test_videos_an_older_saga_decoded_with_decord_from_a_misread_format_are_extracted_again(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """decord read other frames from H.264 in AVI (no error): the records stayed wrong on every rerun."""
    videos = make_video_tree(tmp_path / "v", per_class=1)
    write_clip(videos / "real" / "old.avi", n_frames=20, seed=7)
    cfg = config(videos, tmp_path / "c", tiny_weights)
    with monkeypatch.context() as old_saga:  # decoder rule 1: every record says decord decoded it
        old_saga.setattr(reader, "decode_video", lambda path, policy: replace(decode.decode_video(path, policy),
                                                                              backend="decord"))
        extract(cfg)
    (tmp_path / "c" / AUDIT_FILE).unlink()  # a cache from before the audit has no such file
    before = {r.path: r for r in FeatureCache.open(tmp_path / "c").records()}
    assert before["real/old.avi"].backend == "decord" and before["real/real_0.mp4"].backend == "decord"
    again = extract(cfg)
    after = {r.path: r for r in FeatureCache.open(tmp_path / "c").records()}
    assert (again.redecoded, again.ok, again.skipped) == (1, 1, len(before) - 1)
    assert after["real/old.avi"].backend == "pyav" and after["real/real_0.mp4"] == before["real/real_0.mp4"]
    assert audited_rule(tmp_path / "c") == decode.DECODER_RULE
    assert (extract(cfg).redecoded, audited_rule(tmp_path / "c")) == (0, decode.DECODER_RULE)
    clean(tmp_path / "c")


def test_appending_keeps_the_caches_split_settings(tmp_path: Path, tiny_weights: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=2)
    split = {"train": 0.5, "val": 0.0, "test": 0.5}
    extract(config(videos, tmp_path / "c", tiny_weights, split_seed=3, split_fractions=split))
    write_clip(videos / "real" / "new.mp4", n_frames=9, seed=7)
    with pytest.raises(SagaError, match=r"refusing to append: the cache splits with seed 3 and fractions "
                                        r"0.5,0,0.5, this run asks for seed 0 .*leave out --split and --split-seed"):
        extract(config(videos, tmp_path / "c", tiny_weights, split_seed=0))
    assert extract(config(videos, tmp_path / "c", tiny_weights)).ok == 1  # left out: the cache's own
    cache = FeatureCache.open(tmp_path / "c")
    assert cache.attrs["split"] == {"seed": 3, "fractions": split}
    assert {r.split for r in cache.records()} <= {"train", "test"}


def _pooled_splits(items: list[tuple[str, str]], existing: dict, fractions: dict, seed: int) -> dict[str, str]:
    """The split rule before source folders were balanced (QA realdata 8): one seeded hash order per class."""
    from saga.cache.manifest import SPLITS, seeded_hash

    out: dict[str, str] = {}
    for cls in sorted({c for _, c in items}):
        counts = {s: existing.get(cls, {}).get(s, 0) for s in SPLITS}
        total = sum(counts.values())
        for path in sorted((p for p, c in items if c == cls), key=lambda p: seeded_hash(seed, p)):
            total += 1
            split = max(SPLITS, key=lambda s: (fractions.get(s, 0.0) * total - counts[s], -SPLITS.index(s)))
            counts[split] += 1
            out[path] = split
    return out


def test_a_cache_split_by_the_older_rule_keeps_its_split_when_it_grows(tmp_path: Path, tiny_weights: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Source folders are balanced for videos planned from now on; a saved split plan is never redrawn."""
    from saga.cache.manifest import assign_splits
    from saga.pipeline import extract as extract_module

    videos = tmp_path / "v"
    for i in range(12):
        write_clip(videos / ("kinetics" if i < 6 else "msrvtt") / f"r{i}.mp4", n_frames=6, seed=i)
    rows = [f"{p.relative_to(videos)},real" for p in sorted(videos.glob("*/*.mp4"))]
    (videos / "labels.csv").write_text("path,generator\n" + "\n".join(rows) + "\n")
    cfg = config(videos, tmp_path / "c", tiny_weights)
    with monkeypatch.context() as m:
        m.setattr(extract_module, "assign_splits", _pooled_splits)
        extract(cfg)
    old = read_split_plan(tmp_path / "c" / "splits.jsonl")
    items = [(p, "real") for p in sorted(old)]
    assert {p: s for p, (_, s) in old.items()} != assign_splits(items, {}, cfg.split_fractions or
                                                                  {"train": 0.7, "val": 0.1, "test": 0.2}, 0)
    write_clip(videos / "msrvtt" / "new.mp4", n_frames=6, seed=99)
    (videos / "labels.csv").write_text((videos / "labels.csv").read_text() + "msrvtt/new.mp4,real\n")
    assert extract(cfg).ok == 1
    after = read_split_plan(tmp_path / "c" / "splits.jsonl")
    assert {p: after[p] for p in old} == old and set(after) == set(old) | {"msrvtt/new.mp4"}
    clean(tmp_path / "c")


def test_an_imported_cache_takes_more_videos_and_stays_valid(tmp_path: Path, tiny_weights: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=2)
    extract(config(videos, tmp_path / "c", tiny_weights))
    export_h5(FeatureCache.open(tmp_path / "c"), tmp_path / "c.h5")
    import_h5(tmp_path / "c.h5", tmp_path / "imported")
    write_clip(videos / "real" / "new.mp4", n_frames=9, seed=7)
    summary = extract(config(videos, tmp_path / "imported", tiny_weights))
    assert (summary.ok, summary.skipped) == (1, 6)
    clean(tmp_path / "imported")
    before = {r.path: r.split for r in FeatureCache.open(tmp_path / "c").records()}
    after = {r.path: r.split for r in FeatureCache.open(tmp_path / "imported").records()}
    assert {p: after[p] for p in before} == before


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("shard_rows", 0), ("workers", -3), ("frames", 0)])
def test_bad_values_are_refused_before_the_cache_is_touched(tmp_path: Path, tiny_weights: Path, field: str,
                                                            value: int) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    with pytest.raises(SagaError, match=f"--{field.replace('_', '-')} must be >= "):
        extract(config(videos, tmp_path / "c", tiny_weights, **{field: value}))
    assert not (tmp_path / "c").exists()


def test_export_to_a_missing_folder_or_onto_a_folder_is_one_line(tmp_path: Path, tiny_weights: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    extract(config(videos, tmp_path / "c", tiny_weights))
    cache = FeatureCache.open(tmp_path / "c")
    with pytest.raises(SagaError, match="no such folder; create it or pass another --h5"):
        export_h5(cache, tmp_path / "missing" / "c.h5")
    with pytest.raises(SagaError, match="is a folder; pass --h5 with a file name"):
        export_h5(cache, tmp_path)


def test_videos_outside_any_generator_folder_are_named_not_skipped_silently(tmp_path: Path) -> None:
    videos = make_video_tree(tmp_path / "v", per_class=1)
    write_clip(videos / "loose.mp4", n_frames=6, seed=1)
    with pytest.warns(UserWarning, match=r"1 video\(s\) directly in the folder \(loose.mp4\) are skipped"):
        items = discover(videos, None, Taxonomy.load("synth"))
    assert "loose.mp4" not in {i.rel for i in items}


def test_cli_into_the_current_folder_with_brackets_in_file_names(tmp_path: Path, tiny_args: list[str]) -> None:
    """`--out .` in an empty folder works; names like `take[/i]2.mp4` print as they are (rich markup)."""
    videos = make_video_tree(tmp_path / "v", per_class=1)
    (videos / "real" / "take[").mkdir()  # a closing tag in the relative path: real/take[/i]2.mp4
    (videos / "real" / "take[" / "i]2.mp4").write_bytes(b"not a video")
    (videos / "real" / "[bold]x.mp4").write_bytes(b"not a video")
    here = tmp_path / "here"
    here.mkdir()
    proc = run_saga("extract", "--videos", str(videos), "--out", ".", *tiny_args, cwd=here, timeout=240)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "real/take[/i]2.mp4:" in proc.stderr and "real/[bold]x.mp4:" in proc.stderr
    assert (here / "zarr.json").is_file() and not list(tmp_path.glob(".*tmp*"))
    proc = run_saga("cache", "info", ".", cwd=here)
    assert proc.returncode == 0 and "real/take[/i]2.mp4" in proc.stdout, proc.stderr


def test_a_second_extraction_into_the_same_cache_is_refused_while_the_first_runs(tmp_path: Path,
                                                                                  tiny_weights: Path) -> None:
    """Two passes at once would extract the same videos twice, and the second would seal the first's part
    while it is still being written."""
    import fcntl

    from saga.locks import LOCK

    videos = make_video_tree(tmp_path / "v", per_class=1)
    cfg = config(videos, tmp_path / "c", tiny_weights)
    extract(cfg)
    write_clip(videos / "real" / "new.mp4", n_frames=9, seed=7)
    fd = os.open(tmp_path / "c" / LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the first pass holds
    with pytest.raises(SagaError, match=f"^{tmp_path / 'c'}: another saga extract is writing this cache right now"):
        extract(cfg)
    os.close(fd)
    assert extract(cfg).ok == 1
    clean(tmp_path / "c")


def _strip_roots(cache_dir: Path) -> None:
    """Make the cache look like an older saga's: no folder recorded anywhere."""
    for recorded in [*cache_dir.glob("parts/*/videos.json"), cache_dir / "video-roots.json"]:
        recorded.unlink(missing_ok=True)


def test_a_second_videos_tree_into_the_same_cache_is_refused_naming_both(tmp_path: Path, tiny_weights: Path) -> None:
    """GenVideo's train/ then test/ into one cache: both trees' X/a.mp4 were one record, the second replacing the first."""
    train = make_video_tree(tmp_path / "G" / "train", per_class=1)
    test = make_video_tree(tmp_path / "G" / "test", per_class=1)
    for clip in test.glob("*/*.mp4"):  # the same names, other videos
        write_clip(clip, n_frames=11, seed=99)
    extract(config(train, tmp_path / "c", tiny_weights))
    before = {r.path: r.fingerprint() for r in FeatureCache.open(tmp_path / "c").records()}
    with pytest.raises(SagaError, match=rf"refusing to extract {test.resolve()} into this cache: it was extracted "
                                        rf"from {train.resolve()}, .*its own --out, or extract their common parent "
                                        rf"{(tmp_path / 'G').resolve()} once .*labels CSV") as refused:
        extract(config(test, tmp_path / "c", tiny_weights))
    assert "\n" not in str(refused.value)
    assert {r.path: r.fingerprint() for r in FeatureCache.open(tmp_path / "c").records()} == before
    assert extract(config(train, tmp_path / "c", tiny_weights)).skipped == len(before)  # its own folder: fine
    moved = tmp_path / "elsewhere"
    train.rename(moved)  # the same data moved (mv keeps size and mtime): taken as before, nothing re-extracted
    assert extract(config(moved, tmp_path / "c", tiny_weights)).skipped == len(before)
    _strip_roots(tmp_path / "c")  # an older cache records no folder: its next pass records one, refused nothing
    assert extract(config(moved, tmp_path / "c", tiny_weights)).skipped == len(before)
    with pytest.raises(SagaError, match=f"it was extracted from {moved.resolve()}, "):
        extract(config(test, tmp_path / "c", tiny_weights))
    more = make_video_tree(tmp_path / "more", per_class=1)  # other videos under other paths: appended, as before
    for i, clip in enumerate(sorted(more.glob("*/*.mp4"))):
        clip.unlink()
        write_clip(clip.with_name(f"more_{clip.name}"), n_frames=9, seed=500 + i)
    appended = extract(config(more, tmp_path / "c", tiny_weights))
    assert appended.skipped == 0 and len(FeatureCache.open(tmp_path / "c").records()) == len(before) + appended.found
    clean(tmp_path / "c")
