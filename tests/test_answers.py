"""Exact match after normalising case, punctuation and articles."""

from __future__ import annotations

import pytest

from vlmexp.evaluation.answers import exact_match, is_exact_match, normalize_answer


@pytest.mark.parametrize(("text", "normal"), [
    ("The Dark-Red.", "darkred"),
    ("  an  Apple ,  a pear!", "apple pear"),
    ("THEATRE", "theatre"),  # 'the' inside a word stays
    ("Yes", "yes"),
    ("", ""),
])
def test_normalize_answer(text, normal):
    assert normalize_answer(text) == normal


def test_exact_match_counts_normalised_equal_answers():
    assert is_exact_match("Red.", "red") and is_exact_match("the crosswalk", "Crosswalk")
    assert not is_exact_match("reddish", "red")
    assert exact_match(["Red.", "blue", "A dark one"], ["red", "green", "dark one"]) == pytest.approx(2 / 3)
    assert exact_match([], []) == 0.0
