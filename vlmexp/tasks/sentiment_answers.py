"""Turning a model's free-text answer or its label scores into a sentiment label."""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# A keyword right after one of these does not count ("not happy").
NEGATORS = {"not", "no", "never", "isn't", "isnt", "wasn't", "wasnt", "don't", "dont", "doesn't", "doesnt", "nor"}
_WORD = re.compile(r"[a-z']+")
_EDGES = string.whitespace + string.punctuation + "\u201c\u201d\u2018\u2019"


@dataclass(frozen=True)
class ParsedAnswer:
    label: str | None  # None: the answer names no label and matches no keyword
    parsed_by: str | None  # "label" | "lexicon" | None


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _count(words: list[str], phrase: str) -> int:
    """Occurrences of ``phrase`` (one or more words) not directly preceded by a negator."""
    target = _words(phrase)
    n = len(target)
    if not n:
        return 0
    return sum(1 for i in range(len(words) - n + 1)
               if words[i:i + n] == target and (i == 0 or words[i - 1] not in NEGATORS))


def parse_label(text: str, labels: Sequence[str], lexicon: Mapping[str, Sequence[str]]) -> ParsedAnswer:
    """The label a generated answer names.

    1. the whole answer is a label, ignoring case, surrounding whitespace, quotes and punctuation;
    2. else exactly one of the labels occurs as a word (an answer naming both is ambiguous);
    3. else the label whose keywords occur most often (a tie, or no keyword, is no answer).
    """
    stripped = text.strip(_EDGES).lower()
    for label in labels:
        if stripped == label.lower():
            return ParsedAnswer(label, "label")
    words = _words(text)
    named = [label for label in labels if _count(words, label) > 0]
    if len(named) == 1:
        return ParsedAnswer(named[0], "label")
    hits = {label: sum(_count(words, keyword) for keyword in lexicon.get(label, ())) for label in labels}
    best = max(hits.values(), default=0)
    winners = [label for label, n in hits.items() if n == best]
    if best > 0 and len(winners) == 1:
        return ParsedAnswer(winners[0], "lexicon")
    return ParsedAnswer(None, None)


def softmax(logprobs: Sequence[float]) -> list[float]:
    """Probabilities of the candidates relative to each other (renormalised over the candidates)."""
    top = max(logprobs)
    exps = [math.exp(lp - top) for lp in logprobs]
    total = sum(exps)
    return [e / total for e in exps]


def decide_by_score(logprobs: Sequence[float], labels: Sequence[str], tie_label: str) -> tuple[str, float]:
    """The more likely label and its softmax probability; an exact tie goes to ``tie_label``."""
    probs = softmax(logprobs)
    best = max(probs)
    winners = [label for label, p in zip(labels, probs) if p == best]
    label = winners[0] if len(winners) == 1 else tie_label
    return label, probs[list(labels).index(label)]
