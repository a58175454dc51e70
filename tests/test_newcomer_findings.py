"""Defects a new user found by running the real-data workflow on a small benchmark."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from saga.errors import SagaError
from saga.pipeline.layout import unknown_folders_error
from saga.taxonomy import Taxonomy


def test_a_typod_label_names_the_generator_it_is_closest_to() -> None:
    """A one-letter typo in a labels CSV is answered with the name it most likely means, not only a list of 20."""
    tax = Taxonomy.load("synth")
    with pytest.raises(SagaError, match=r"'syn-lattte' is not in taxonomy 'synth' \(did you mean 'syn-latte'\?\)"):
        tax.canonical("syn-lattte")
    with pytest.raises(SagaError, match=r"did you mean 'real'\?"):
        tax.canonical("reall")
    with pytest.raises(SagaError) as err:
        tax.canonical("completely-unrelated")
    assert "did you mean" not in str(err.value)


def test_a_typod_generator_folder_names_the_generator_it_is_closest_to(tmp_path: Path) -> None:
    """Labelling by folder: a misspelt generator folder is answered with the name it most likely means."""
    tax = Taxonomy.load("synth")
    one = str(unknown_folders_error(tmp_path, [tmp_path / "syn-lattte"], {}, tax, beside_generators=True))
    assert "folder name 'syn-lattte' is not a generator of taxonomy 'synth' (did you mean 'syn-latte'?); rename" in one
    two = str(unknown_folders_error(tmp_path, [tmp_path / "syn-lattte", tmp_path / "notes"], {}, tax, True))
    assert "(syn-lattte, notes) (did you mean: syn-lattte -> 'syn-latte'?); rename each" in two


def test_a_probe_folder_passed_as_a_run_is_named_as_a_probe(tmp_path: Path) -> None:
    """`saga predict/evaluate/tsig/tsne/calibrate RUNS/PROBE-SD-L` (a `saga probe` folder) said "the run has not
    completed an epoch (rerun it to resume)": wrong advice, since a probe has no transformer to resume."""
    from typer.testing import CliRunner

    from saga.cli import app
    from saga.runs.loading import load_model

    probe = tmp_path / "probe-sd-l"
    probe.mkdir()
    (probe / "config.json").write_text(json.dumps({"kind": "probe", "stage": "probe", "level": "SD-L"}))
    with pytest.raises(SagaError, match=r"probe-sd-l: holds a linear probe \(saga probe\), not a trained model"):
        load_model(probe)
    res = CliRunner().invoke(app, ["predict", str(probe), str(tmp_path / "clip.mp4")])
    said = str(res.exception)  # `main` prints a SagaError as one line, exit 2
    assert isinstance(res.exception, SagaError) and "holds a linear probe" in said and "resume" not in said


def test_a_labels_row_without_a_generator_says_so() -> None:
    """A short row (`real/a.mp4` with no `,generator`) or an empty cell said "label '' is not in taxonomy"."""
    from saga.pipeline.inputs import parse_labels

    tax = Taxonomy.load("synth")
    for text in ("path,generator\nreal/a.mp4,real\nreal/b.mp4\n", "path,generator\nreal/a.mp4,real\nreal/b.mp4, \n"):
        with pytest.raises(SagaError, match=r"^labels.csv:3: real/b.mp4 has no generator; every row needs "
                                            r"path,generator$"):
            parse_labels(text, tax)
