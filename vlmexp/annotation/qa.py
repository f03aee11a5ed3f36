"""Q&A pairs from templates (``task.qa_templates``: name -> a template class by ``_target_`` and its
wording). Each template turns one annotated image (its size and objects) into question/answer pairs;
what a template samples (absent classes for negative questions) comes from a generator seeded by the
run's ``seed``, the image and the template name, so the pairs do not depend on the order images are
processed in."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class QAPair:
    template: str
    question: str
    answer: str

    def to_dict(self) -> dict:
        return {"template": self.template, "question": self.question, "answer": self.answer}


@dataclass
class QAContext:
    """What templates share: the vocabulary (every class the detector can name), the model's box
    convention (``model.box_format``) and the seeded generator of this image and template."""

    vocabulary: list[str]
    box_format: object
    rng: random.Random


def plural(label: str) -> str:
    """English plural of the last word, by the regular rules ("glass" -> "glasses", "box" -> "boxes")."""
    return f"{label}es" if label.endswith(("s", "x", "z", "ch", "sh")) else f"{label}s"


def _size(record: dict) -> tuple[int, int]:
    return record["width"], record["height"]


def _unique(record: dict) -> list[dict]:
    """Objects that are the only one of their class in the image (so "the <label>" names one box)."""
    counts = Counter(o["label"] for o in record["objects"])
    return sorted((o for o in record["objects"] if counts[o["label"]] == 1), key=lambda o: o["label"])


class Existence:
    """"Is there a <label>?": yes for each class present, no for up to ``negatives`` absent vocabulary
    classes (sampled)."""

    def __init__(self, question: str = "Is there a {label} in the image?", yes: str = "yes", no: str = "no",
                 negatives: int = 1):
        self.question, self.yes, self.no, self.negatives = question, yes, no, negatives

    def pairs(self, name: str, record: dict, ctx: QAContext) -> list[QAPair]:
        present = sorted({o["label"] for o in record["objects"]})
        absent = [c for c in ctx.vocabulary if c not in present]
        asked = sorted(ctx.rng.sample(absent, min(self.negatives, len(absent))))
        return ([QAPair(name, self.question.format(label=c, plural=plural(c)), self.yes) for c in present]
                + [QAPair(name, self.question.format(label=c, plural=plural(c)), self.no) for c in asked])


class Count:
    """"How many <label>s?" for each class present, and the total number of objects."""

    def __init__(self, question: str = "How many {plural} are there?",
                 total_question: str | None = "How many objects are there?"):
        self.question, self.total_question = question, total_question

    def pairs(self, name: str, record: dict, ctx: QAContext) -> list[QAPair]:
        counts = Counter(o["label"] for o in record["objects"])
        out = [QAPair(name, self.question.format(label=c, plural=plural(c)), str(counts[c])) for c in sorted(counts)]
        if self.total_question:
            out.append(QAPair(name, self.total_question, str(len(record["objects"]))))
        return out


class Location:
    """"Where is the <label>?" for each class with one object: the third of the image its box centre lies
    in, vertically and horizontally ("top left", "middle centre", "bottom right")."""

    def __init__(self, question: str = "Where is the {label}?", answer: str = "{vertical} {horizontal}",
                 horizontal: tuple = ("left", "centre", "right"), vertical: tuple = ("top", "middle", "bottom")):
        self.question, self.answer = question, answer
        self.horizontal, self.vertical = list(horizontal), list(vertical)

    def place(self, box: list[float], size: tuple[int, int]) -> tuple[str, str]:
        cx, cy = (box[0] + box[2]) / 2 / size[0], (box[1] + box[3]) / 2 / size[1]
        return self.vertical[min(2, int(cy * 3))], self.horizontal[min(2, int(cx * 3))]

    def pairs(self, name: str, record: dict, ctx: QAContext) -> list[QAPair]:
        out = []
        for obj in _unique(record):
            vertical, horizontal = self.place(obj["box"], _size(record))
            out.append(QAPair(name, self.question.format(label=obj["label"]),
                              self.answer.format(vertical=vertical, horizontal=horizontal)))
        return out


class Description:
    """"Describe the <label> at <box>." answered with the object's caption (box in the model's convention)."""

    def __init__(self, question: str = "Describe the {label} at {box}."):
        self.question = question

    def pairs(self, name: str, record: dict, ctx: QAContext) -> list[QAPair]:
        return [QAPair(name, self.question.format(label=o["label"], box=ctx.box_format.box(o["box"], _size(record))),
                       o["caption"].strip())
                for o in record["objects"] if (o.get("caption") or "").strip()]


class Grounding:
    """"Where is the <label>? Give its bounding box." for each class with one object, answered with the box
    written as the target model writes boxes (``model.box_format``)."""

    def __init__(self, question: str = "Give the bounding box of the {label}."):
        self.question = question

    def pairs(self, name: str, record: dict, ctx: QAContext) -> list[QAPair]:
        return [QAPair(name, self.question.format(label=o["label"]),
                       ctx.box_format.answer(o["box"], o["label"], _size(record))) for o in _unique(record)]


def generate_pairs(record: dict, templates: dict, vocabulary: list[str], box_format, seed: int) -> list[QAPair]:
    """Every template's pairs for one annotated image, templates in config order."""
    out = []
    for name, template in templates.items():
        rng = random.Random(f"{seed}:{record['image']}:{name}")
        out.extend(template.pairs(name, record, QAContext(list(vocabulary), box_format, rng)))
    return out
