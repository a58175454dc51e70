"""Defects a new user found by running the real-data workflow on a small benchmark."""
from __future__ import annotations

import pytest

from saga.errors import SagaError
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
