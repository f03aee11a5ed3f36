"""Free-text answer matching, with the SQuAD/VQA normalisation (case, punctuation, articles, spaces)."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """'The Dark-Red.' -> 'darkred': lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def is_exact_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


def exact_match(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Share of predictions equal to their answer after normalisation (0.0 for no pairs)."""
    if not answers:
        return 0.0
    return sum(is_exact_match(p, a) for p, a in zip(predictions, answers)) / len(answers)
