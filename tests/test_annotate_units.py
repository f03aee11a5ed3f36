"""Q&A templates, box conventions, splitting and the LLaVA export, with exact expected outputs."""

from __future__ import annotations

import json
import random

import pytest
from omegaconf import OmegaConf
from PIL import Image

from vlmexp.annotation.boxes import NormalizedBox, QwenBbox2d
from vlmexp.annotation.export import write_dataset
from vlmexp.annotation.qa import Count, Description, Existence, Grounding, Location, QAContext, generate_pairs
from vlmexp.annotation.split import check_ratios, split_images
from vlmexp.data.vqa import LlavaFormat, load_vqa_file
from vlmexp.errors import ConfigError

VOCABULARY = ["can", "glass", "plastic", "wood"]
RECORD = {"image": "a.jpg", "width": 300, "height": 200, "objects": [
    {"box": [10, 10, 90, 60], "label": "glass", "score": 0.9, "caption": "a glass on the grass"},
    {"box": [120, 150, 180, 190], "label": "plastic", "score": 0.8, "caption": "a bottle by a stone"},
    {"box": [230, 80, 290, 120], "label": "plastic", "score": 0.7, "caption": " "}]}


def _pairs(template, box_format=None, seed=0):
    ctx = QAContext(VOCABULARY, box_format or NormalizedBox(), random.Random(seed))
    return [(p.question, p.answer) for p in template.pairs("t", RECORD, ctx)]


def test_existence_asks_present_classes_and_sampled_absent_ones():
    pairs = _pairs(Existence(negatives=2))
    assert pairs[:2] == [("Is there a glass in the image?", "yes"), ("Is there a plastic in the image?", "yes")]
    assert sorted(pairs[2:]) == [("Is there a can in the image?", "no"), ("Is there a wood in the image?", "no")]
    assert _pairs(Existence(negatives=5))[2:] == pairs[2:]  # only two classes are absent
    assert _pairs(Existence(negatives=0)) == pairs[:2]


def test_count_per_class_and_total():
    assert _pairs(Count()) == [("How many glasses are there?", "1"), ("How many plastics are there?", "2"),
                               ("How many objects are there?", "3")]
    assert _pairs(Count(question="How many {label} objects?", total_question=None)) == [
        ("How many glass objects?", "1"), ("How many plastic objects?", "2")]


def test_location_is_the_third_of_the_image_of_the_box_centre():
    # glass centre (50, 35) of 300 x 200: left third, top third; plastic has two objects: not asked
    assert _pairs(Location()) == [("Where is the glass?", "top left")]
    loc = Location()
    assert [loc.place(b, (300, 200)) for b in ([100, 67, 200, 133], [290, 190, 300, 200], [0, 0, 1, 1])] == \
        [("middle", "centre"), ("bottom", "right"), ("top", "left")]


def test_description_uses_the_caption_and_the_models_box_convention():
    assert _pairs(Description()) == [("Describe the glass at [0.03, 0.05, 0.30, 0.30].", "a glass on the grass"),
                                     ("Describe the plastic at [0.40, 0.75, 0.60, 0.95].", "a bottle by a stone")]


def test_grounding_in_qwen25_resized_pixels_and_llava_normalised():
    # 300 x 200 is under 256*28*28 px: the processor scales it up to 560 x 392 (multiples of 28),
    # x by 560/300, y by 392/200
    qwen = QwenBbox2d(min_pixels=200704, max_pixels=1003520)
    assert qwen.coords([10, 10, 90, 60], (300, 200)) == [19, 20, 168, 118]
    assert _pairs(Grounding(), qwen) == [("Give the bounding box of the glass.",
                                          '{"bbox_2d": [19, 20, 168, 118], "label": "glass"}')]
    tiny = QwenBbox2d(min_pixels=3136, max_pixels=12544)  # the tiny model: at most 12544 px -> 112 x 84
    assert tiny.coords([10, 10, 90, 60], (300, 200)) == [4, 4, 34, 25]
    assert _pairs(Grounding(), NormalizedBox()) == [("Give the bounding box of the glass.", "[0.03, 0.05, 0.30, 0.30]")]
    assert NormalizedBox(scale=1000, decimals=0).box([10, 10, 90, 60], (300, 200)) == "[33, 50, 300, 300]"


def test_generated_pairs_are_deterministic_given_the_seed():
    templates = {"existence": Existence(negatives=1), "count": Count()}
    one = generate_pairs(RECORD, templates, VOCABULARY, NormalizedBox(), seed=7)
    assert one == generate_pairs(RECORD, templates, VOCABULARY, NormalizedBox(), seed=7)
    negatives = {generate_pairs(RECORD, templates, VOCABULARY, NormalizedBox(), seed=s)[2].question
                 for s in range(20)}
    assert negatives == {"Is there a can in the image?", "Is there a wood in the image?"}
    assert [p.template for p in one] == ["existence"] * 3 + ["count"] * 3


def test_split_by_image_is_seeded_and_sized_by_the_ratios():
    images = [f"img_{i:02d}.jpg" for i in range(10)]
    split = split_images(images, 0.8, 0.1, seed=3)
    assert sorted(split.values()) == ["test"] + ["train"] * 8 + ["val"]
    assert split == split_images(list(reversed(images)), 0.8, 0.1, seed=3)
    assert split != split_images(images, 0.8, 0.1, seed=4)
    assert sorted(split_images(images[:7], 0.5, 0.5, seed=0).values()) == ["train"] * 4 + ["val"] * 3


@pytest.mark.parametrize("split, message", [
    ({"train": 0.8, "val": 0.3}, "task.split: train 0.8 + val 0.3 = 1.1 is over 1 (the test split takes what is left)"),
    ({"train": 1.5, "val": 0.0}, "task.split.train=1.5: must be a fraction between 0 and 1"),
    ({"train": 0.8, "test": 0.2}, "task.split.test: unknown key (give train and val; the rest is the test split)"),
])
def test_bad_split_ratios_are_one_line(split, message):
    with pytest.raises(ConfigError) as err:
        check_ratios(split)
    assert str(err.value) == message


def test_llava_export_is_read_by_the_vqa_llava_reader_as_it_is(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/b.jpg"):
        Image.new("RGB", (30, 20)).save(images / name)
    qa_a = [{"template": "count", "question": "How many objects are there?", "answer": "2"},
            {"template": "existence", "question": "Is there a can in the image?", "answer": "no"}]
    qa_b = [{"template": "count", "question": "How many objects are there?", "answer": "0"}]
    entries = [{"image": "a.jpg", "width": 30, "height": 20, "split": "train", "objects": [], "qa": qa_a},
               {"image": "sub/b.jpg", "width": 30, "height": 20, "split": "val", "objects": [], "qa": qa_b}]
    out = tmp_path / "out"
    files = write_dataset(out, images, entries)
    assert sorted(files) == ["annotations", "train_jsonl", "train_llava", "val_jsonl", "val_llava"]
    assert json.loads((out / "train_llava.json").read_text()) == [{"id": "a.jpg", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nHow many objects are there?"}, {"from": "gpt", "value": "2"},
        {"from": "human", "value": "Is there a can in the image?"}, {"from": "gpt", "value": "no"}]}]
    samples = load_vqa_file(out / "train_llava.json", "train", LlavaFormat(), images).samples
    assert [(s.path, s.question, s.answer) for s in samples] == [
        (images / "a.jpg", "How many objects are there?", "2"),
        (images / "a.jpg", "Is there a can in the image?", "no")]
    linked = load_vqa_file(out / "val_llava.json", "val", LlavaFormat(), out / "images").samples
    assert [(s.path.resolve(), s.answer) for s in linked] == [((images / "sub/b.jpg").resolve(), "0")]
    jsonl = load_vqa_file(out / "val.jsonl", "val").samples
    assert [(s.path.resolve(), s.question) for s in jsonl] == [((images / "sub/b.jpg").resolve(),
                                                                "How many objects are there?")]
    assert not (out / "test_llava.json").exists()  # no image in the test split


def test_annotate_task_config_composes_the_detector_and_captioner_groups(compose_cfg):
    cfg = compose_cfg(["task=annotate", "detector=ensemble", "captioner=engine", "model=llava15_7b"])
    assert cfg.detector._target_ == "vlmexp.detectors.ensemble.EnsembleDetector"
    assert cfg.captioner._target_ == "vlmexp.annotation.captioners.EngineCaptioner"
    assert OmegaConf.to_container(cfg.task.split) == {"train": 0.8, "val": 0.1}
    assert cfg.model.box_format._target_ == "vlmexp.annotation.boxes.NormalizedBox"
    assert compose_cfg(["task=annotate"]).detector._target_ == "vlmexp.detectors.labels.LabelsDetector"
