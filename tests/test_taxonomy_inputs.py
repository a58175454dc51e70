"""Taxonomy names and video discovery: clashing names, GenVideo's spellings, empty sd,
labels CSV line numbers, and folders the layout must skip or report (no video decoding)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from conftest import run_saga
from saga.errors import SagaError
from saga.pipeline.inputs import discover, parse_labels
from saga.taxonomy import Taxonomy

GENVIDEO = Taxonomy.load("genvideo")


def generator(name: str, extra: str = "", sd: str = "SD 1.5") -> str:
    return f'[generators."{name}"]\ntask = "T2V"\nsd = "{sd}"\nteam = "T"\n{extra}'


def touch(root: Path, *rels: str) -> Path:
    """Empty files stand in for videos: discovery only looks at names."""
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    return root


# --- 1. names that differ only in case or spacing ---------------------------------------------------------

@pytest.mark.parametrize("first, second", [("SD", "sd"), ("Show-1", "Show_1"), ("Gen2", "gen 2")])
def test_generator_names_that_collide_are_refused_naming_the_file_and_both(first: str, second: str) -> None:
    with pytest.raises(SagaError) as err:
        Taxonomy.from_toml(generator(first) + generator(second), origin="my.toml")
    message = str(err.value)
    assert message.startswith("my.toml: ") and repr(first) in message and repr(second) in message
    assert "\n" not in message


def test_sd_backbones_or_teams_spelled_two_ways_are_refused_not_split_into_two_classes() -> None:
    with pytest.raises(SagaError, match=r"^my.toml: sd 'SD 2.1' and 'sd 2.1' differ only in case"):
        Taxonomy.from_toml(generator("A", sd="SD 2.1") + generator("B", sd="sd 2.1"), origin="my.toml")
    with pytest.raises(SagaError, match=r"^my.toml: team 'T' and 't' differ only in case"):
        Taxonomy.from_toml(generator("A") + generator("B").replace('team = "T"', 'team = "t"'), origin="my.toml")
    with pytest.raises(SagaError, match=r"sd 'Fake': 'fake' is reserved"):
        Taxonomy.from_toml(generator("A", sd="Fake"), origin="my.toml")


def test_a_generator_name_with_surrounding_spaces_is_refused() -> None:
    with pytest.raises(SagaError, match=r"^my.toml: generator ' SVD': .*surrounding spaces; write it as 'SVD'$"):
        Taxonomy.from_toml(generator(" SVD"), origin="my.toml")


def test_a_generator_that_collides_with_a_real_alias_is_refused() -> None:
    with pytest.raises(SagaError, match=r"^my.toml: 'Kinetics_400' and 'Kinetics-400' are the same name"):
        Taxonomy.from_toml('real = ["Kinetics-400"]\n' + generator("Kinetics_400"), origin="my.toml")


def test_the_cli_refuses_a_case_duplicate_taxonomy_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "casedup.toml"
    path.write_text(generator("SD") + generator("sd"))
    proc = run_saga("taxonomy", "show", str(path))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"{path}: 'SD' and 'sd' are the same name" in proc.stderr


# --- 2. GenVideo's spellings and aliases ------------------------------------------------------------------

@pytest.mark.parametrize("spelling, name", [
    ("Show_1", "Show-1"), ("Lavie", "LaVie"), ("I2VGen_XL", "I2VGen-XL"), ("Open-Sora", "OpenSora"),
    ("Gen-2", "Gen2"), ("Morph Studio", "MorphStudio"), (" zeroscope\t", "ZeroScope"),
    ("Kinetics_400", "real"), ("MSR_VTT", "real"), ("Youku_mPLUG", "real"), ("Youku-mPLUG~", "real"),
])
def test_genvideo_spellings_resolve(spelling: str, name: str) -> None:
    assert GENVIDEO.canonical(spelling) == name


def test_genvideo_folder_names_label_the_videos(tmp_path: Path) -> None:
    touch(tmp_path, "Show_1/a.mp4", "Youku-mPLUG~/b.mp4", "Kinetics_400/c.mp4")
    found = {v.rel: v.generator for v in discover(tmp_path, None, GENVIDEO)}
    assert found == {"Show_1/a.mp4": "Show-1", "Youku-mPLUG~/b.mp4": "real", "Kinetics_400/c.mp4": "real"}


def test_generator_aliases_resolve_and_survive_the_cache_round_trip() -> None:
    taxonomy = Taxonomy.from_toml(generator("SVD", 'aliases = ["Stable Video Diffusion"]\n'), origin="my.toml")
    assert taxonomy.canonical("stable-video-diffusion") == "SVD"
    assert taxonomy.labels("Stable Video Diffusion")["GEN-L"] == "SVD"
    assert Taxonomy.from_dict(taxonomy.to_dict()).canonical("Stable Video Diffusion") == "SVD"


def test_a_taxonomy_without_aliases_stores_the_same_generators_as_before() -> None:
    """Older caches compare their stored generators with this pass's: no new key may appear."""
    assert all(set(g) == {"task", "sd", "team", "inferred"} for g in GENVIDEO.to_dict()["generators"].values())


@pytest.mark.parametrize("toml, names", [
    (generator("SVD", 'aliases = ["Sora"]\n') + generator("Sora"), ("'Sora'", "'Sora'")),
    (generator("A", 'aliases = ["x-y"]\n') + generator("B", 'aliases = ["X Y"]\n'), ("'x-y'", "'X Y'")),
    ('real = ["youtube"]\n' + generator("A", 'aliases = ["You_Tube"]\n'), ("'You_Tube'", "'youtube'")),
], ids=["alias-vs-name", "alias-vs-alias", "alias-vs-real"])
def test_aliases_that_clash_with_any_name_or_alias_are_refused(toml: str, names: tuple[str, str]) -> None:
    with pytest.raises(SagaError) as err:
        Taxonomy.from_toml(toml, origin="my.toml")
    assert str(err.value).startswith("my.toml: ") and all(n in str(err.value) for n in names)


@pytest.mark.parametrize("aliases", ['"SVD2"', '[""]', "[1]", '["fake"]'])
def test_malformed_or_reserved_aliases_are_refused(aliases: str) -> None:
    with pytest.raises(SagaError, match=r"^my.toml: generator 'SVD': "):
        Taxonomy.from_toml(generator("SVD", f"aliases = {aliases}\n"), origin="my.toml")


# --- 3. empty sd ----------------------------------------------------------------------------------------

def test_an_empty_sd_is_refused_with_the_spelling_for_none() -> None:
    with pytest.raises(SagaError, match=r'^my.toml: generator \'SVD\': empty sd; write "none" for no SD backbone$'):
        Taxonomy.from_toml(generator("SVD", sd=" "), origin="my.toml")
    assert Taxonomy.from_toml(generator("SVD", sd="none")).labels("SVD")["SD-L"] is None


# --- 4. labels CSV line numbers -----------------------------------------------------------------------

@pytest.mark.parametrize("text, line", [
    ("path,generator\na/1.mp4,SVD\n\n\nb/2.mp4,NotAGen\n", 5),
    ('path,generator\n"a/1\nx.mp4",SVD\nb/2.mp4,NotAGen\n', 4),
    ('path,generator\r\n\r\n"a/1\r\nx.mp4",SVD\r\nb/2.mp4,NotAGen\r\n', 5),
    ('path,generator\n"a/1\nx.mp4",NotAGen\n', 2),  # a multi-line row is named by the line it starts on
], ids=["blank-lines", "multi-line-field", "crlf-blank-and-multi-line", "multi-line-row-itself"])
def test_labels_errors_name_the_physical_line(text: str, line: int) -> None:
    with pytest.raises(SagaError, match=rf"^labels.csv:{line}: label 'NotAGen' is not in taxonomy"):
        parse_labels(text, GENVIDEO, "labels.csv")


def test_a_duplicate_names_both_physical_lines() -> None:
    text = "path,generator\n\na/1.mp4,SVD\n\nb.mp4,SVD\n./a//1.mp4,Sora\n"
    with pytest.raises(SagaError, match=r"^labels.csv:6: a/1.mp4 is listed twice \(first on line 3\); keep one$"):
        parse_labels(text, GENVIDEO, "labels.csv")


def test_labels_rows_still_parse_with_blank_lines_and_short_rows() -> None:
    items = parse_labels(" Path , Generator ,note\n\na/1.mp4, show_1 \nb/2.mp4,MSR_VTT,x,extra\n", GENVIDEO)
    assert [(i.rel, i.generator) for i in items] == [("a/1.mp4", "Show-1"), ("b/2.mp4", "real")]


# --- 5. folders without videos, partial labels.csv ------------------------------------------------------

def test_a_non_generator_folder_without_videos_is_skipped_with_one_warning(tmp_path: Path) -> None:
    touch(tmp_path, "ZeroScope/a.mp4", "ZeroScope.csv", "index/train.csv", "notes/readme.txt")
    with pytest.warns(UserWarning, match=r"2 folder\(s\) without videos \(index, notes\) are not generators") as rec:
        found = discover(tmp_path, None, GENVIDEO)
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert [(v.rel, v.generator) for v in found] == [("ZeroScope/a.mp4", "ZeroScope")]


def test_a_non_generator_folder_with_videos_still_stops_the_run(tmp_path: Path) -> None:
    touch(tmp_path, "ZeroScope/a.mp4", "WildScrape/deep/b.mp4")
    with pytest.raises(SagaError, match=r"folder name 'WildScrape' is not a generator of taxonomy 'genvideo'"):
        discover(tmp_path, None, GENVIDEO)


def test_an_auto_detected_labels_csv_that_leaves_videos_out_warns_once(tmp_path: Path) -> None:
    touch(tmp_path, "x/a.mp4", "x/b.mp4", "y/c.mp4", "loose.mp4")
    (tmp_path / "labels.csv").write_text("path,generator\nx/a.mp4,SVD\n")
    with pytest.warns(UserWarning, match=r"labels.csv: 3 video\(s\) in .* are not listed in it \(e.g. loose.mp4\)") as rec:
        found = discover(tmp_path, None, GENVIDEO)
    assert len(rec) == 1 and [v.rel for v in found] == ["x/a.mp4"]


def test_a_complete_or_explicit_labels_csv_does_not_warn(tmp_path: Path) -> None:
    touch(tmp_path, "x/a.mp4", "x/b.mp4")
    (tmp_path / "labels.csv").write_text("path,generator\nx/a.mp4,SVD\nx/b.mp4,Sora\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(discover(tmp_path, None, GENVIDEO)) == 2
        (tmp_path / "labels.csv").write_text("path,generator\nx/a.mp4,SVD\n")
        assert len(discover(tmp_path, tmp_path / "labels.csv", GENVIDEO)) == 1  # a subset chosen on purpose


# --- 6. layouts with a level above the generator folders, empty generator folders (QA realdata 1, 4, 6) ----

def test_videos_one_level_too_high_names_the_folder_to_pass(tmp_path: Path) -> None:
    """`--videos /data` for /data/GenVideo: "rename it" would have labelled every video 'GenVideo'."""
    touch(tmp_path, "GenVideo/ZeroScope/a.mp4", "GenVideo/Sora/b.mp4", "GenVideo/MSR-VTT/c.mp4")
    with pytest.raises(SagaError) as err:
        discover(tmp_path, None, GENVIDEO)
    message = str(err.value)
    assert message == (f"{tmp_path}/GenVideo: folder name 'GenVideo' is not a generator of taxonomy 'genvideo' but "
                       "holds generator folders (MSR-VTT, Sora, ZeroScope): --videos points one level above them; "
                       f"pass --videos {tmp_path}/GenVideo")


@pytest.mark.parametrize("rels, level", [
    (("train/ZeroScope/a.mp4", "train/Kinetics-400/b.mp4", "test/Sora/c.mp4", "test/MSR-VTT/d.mp4"),
     "test: MSR-VTT, Sora; train: Kinetics-400, ZeroScope"),
    (("real/Kinetics-400/a.mp4", "fake/ZeroScope/b.mp4"), "fake: ZeroScope"),
], ids=["train-test", "real-fake"])
def test_a_train_test_or_real_fake_level_is_recognised_not_renamed(tmp_path: Path, rels: tuple[str, ...],
                                                                   level: str) -> None:
    touch(tmp_path, *rels)
    with pytest.raises(SagaError) as err:
        discover(tmp_path, None, GENVIDEO)
    message = str(err.value)
    assert message.startswith(f"{tmp_path}: ") and f"hold generator folders ({level})" in message
    assert "rename it" not in message and "--labels CSV" in message and "\n" not in message
    first = level.split(":")[0]
    assert f"pass --videos {tmp_path}/{first} " in message


def test_a_real_folder_of_real_sources_is_the_real_class(tmp_path: Path) -> None:
    """`real` is a name of the real class in the taxonomy (genvideo.toml's real list; saga synth's folder)."""
    touch(tmp_path, "real/Kinetics-400/a.mp4", "real/b.mp4", "ZeroScope/c.mp4")
    found = {v.rel: v.generator for v in discover(tmp_path, None, GENVIDEO)}
    assert found == {"real/Kinetics-400/a.mp4": "real", "real/b.mp4": "real", "ZeroScope/c.mp4": "ZeroScope"}


def test_a_generator_folder_holding_folders_of_other_classes_is_refused(tmp_path: Path) -> None:
    touch(tmp_path, "real/ZeroScope/a.mp4", "real/b.mp4", "Sora/SD/c.mp4", "SD/part_0/d.mp4")
    with pytest.raises(SagaError, match=rf"^{tmp_path}/Sora: holds folders named after other classes of taxonomy "
                                        r"'genvideo' \(SD\), yet every video below it is labelled Sora by its "
                                        r"folder's name; 1 more folder\(s\) likewise: move them out beside it, or "
                                        r"pass --labels CSV$"):
        discover(tmp_path, None, GENVIDEO)


def test_every_unknown_folder_is_named_in_one_error(tmp_path: Path) -> None:
    touch(tmp_path, "ZeroScope/a.mp4", "Kinetics-400/b.mp4", "WildScrape/c.mp4", "HotShot-XL/d.mp4",
          "test/Sora/e.mp4")
    with pytest.raises(SagaError) as err:
        discover(tmp_path, None, GENVIDEO)
    message = str(err.value)
    assert "2 folders are not generators of taxonomy 'genvideo' (HotShot-XL, WildScrape)" in message
    assert "move those that hold no generator's videos out of --videos" in message
    assert "hold generator folders (test: Sora)" in message and "\n" not in message


def test_an_empty_generator_folder_or_archives_warn_once_each(tmp_path: Path) -> None:
    touch(tmp_path, "ZeroScope/z.mp4", "ZeroScope/ZeroScope.tar.gz.part-aa", "Kinetics-400/k.mp4",
          "Kinetics-400/kin_more.tar.gz", "Pika/Pika.zip.001", "Pika/readme.txt", "Gen2/notes.txt")
    (tmp_path / "Sora").mkdir()
    with pytest.warns(UserWarning) as rec:
        found = discover(tmp_path, None, GENVIDEO)
    assert [v.rel for v in found] == ["Kinetics-400/k.mp4", "ZeroScope/z.mp4"]
    lines = sorted(str(w.message) for w in rec)
    assert lines == [
        f"{tmp_path}/Gen2: generator folder holds no videos, only 1 other file(s) (Gen2/notes.txt), so Gen2 gets "
        "none from it; put its videos there and rerun, or remove the folder",
        f"{tmp_path}/Kinetics-400: 1 archive file(s) or archive part(s) beside its videos are not read "
        "(Kinetics-400/kin_more.tar.gz); unpack them there and rerun to add their videos",
        f"{tmp_path}/Pika: generator folder holds no videos, only 2 other file(s) (1 archive(s) or archive part(s): "
        "Pika/Pika.zip.001), so Pika gets none from it; unpack them there and rerun",
        f"{tmp_path}/Sora: generator folder holds no videos (it is empty), so Sora gets none from it; put its "
        "videos there and rerun, or remove the folder",
        f"{tmp_path}/ZeroScope: 1 archive file(s) or archive part(s) beside its videos are not read "
        "(ZeroScope/ZeroScope.tar.gz.part-aa); unpack them there and rerun to add their videos",
    ]


def test_taxonomy_show_prints_bracketed_names_as_written(tmp_path: Path) -> None:
    """`saga taxonomy show` read a TOML's names and description as rich markup: `[v1.5]` vanished."""
    from typer.testing import CliRunner

    from saga.cli import app

    path = tmp_path / "mine.toml"
    path.write_text('name = "lab [x]"\ndescription = "ours [draft]"\n'
                    + generator("kling [v1.5]", sd="none").replace('team = "T"', 'team = "T [2]"'))
    result = CliRunner().invoke(app, ["taxonomy", "show", str(path)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "lab [x]" in text and "ours [draft]" in text and "T [2]" in text
    assert "left out of SD-L (no SD backbone): kling [v1.5]" in text
