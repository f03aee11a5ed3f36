"""VQA files: JSONL and LLaVA formats, missing images counted, malformed lines named by file and line."""

from __future__ import annotations

import json

import pytest

from tests.vqa_helpers import write_jsonl
from vlmexp.data.vqa import LlavaFormat, load_vqa_file
from vlmexp.errors import DataError


@pytest.fixture
def images(tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for name, colour in (("a.png", (255, 0, 0)), ("b.png", (0, 0, 255))):
        Image.new("RGB", (32, 32), colour).save(tmp_path / "imgs" / name)
    return tmp_path / "imgs"


def test_jsonl_relative_and_absolute_paths_and_missing_images(tmp_path, images):
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"image_path": "imgs/a.png", "question": "Colour?", "answer": "red"},
        "",
        {"image_path": str(images / "b.png"), "question": "Colour?", "answer": "blue"},
        {"image_path": "imgs/gone.png", "question": "Colour?", "answer": "green"},
        {"image_path": "imgs/also_gone.png", "question": "Colour?", "answer": "green"},
    ])
    loaded = load_vqa_file(path, "train")
    assert loaded.missing_images == 2
    assert [(s.id, s.path, s.answer, s.split) for s in loaded.samples] == [
        ("train:1", images / "a.png", "red", "train"), ("train:3", images / "b.png", "blue", "train")]


@pytest.mark.parametrize(("line", "message"), [
    ('{"image_path": "imgs/a.png", "question": "Colour?"', "not valid JSON"),
    ('["imgs/a.png", "Colour?", "red"]', "expected a JSON object"),
    ('{"image_path": "imgs/a.png", "question": "Colour?"}', "'answer' must be a non-empty string"),
    ('{"image_path": "imgs/a.png", "question": 3, "answer": "red"}', "'question' must be a non-empty string"),
])
def test_jsonl_malformed_line_names_file_and_line(tmp_path, images, line, message):
    good = json.dumps({"image_path": "imgs/a.png", "question": "Colour?", "answer": "red"})
    path = write_jsonl(tmp_path / "val.jsonl", [good, good, line, good])
    with pytest.raises(DataError) as err:
        load_vqa_file(path, "val")
    assert str(err.value).startswith(f"{path}:3: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def _llava_records():
    return [
        {"id": "img-a", "image": "a.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Is it bright?"}, {"from": "gpt", "value": "Yes"}]},
        {"id": "img-gone", "image": "gone.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "green"}]},
        {"id": "img-b", "image": "b.png", "conversations": [
            {"from": "human", "value": "What colour is it?\n<image>"}, {"from": "gpt", "value": "blue"}]},
    ]


def test_llava_json_one_sample_per_turn_pair_images_under_image_dir(tmp_path, images):
    path = tmp_path / "train_llava.json"
    path.write_text(json.dumps(_llava_records(), indent=2))
    loaded = load_vqa_file(path, "train", LlavaFormat(), images)
    assert loaded.missing_images == 1
    assert [(s.id, s.path.name, s.question, s.answer) for s in loaded.samples] == [
        ("train:img-a#0", "a.png", "What colour is it?", "Red."),
        ("train:img-a#1", "a.png", "Is it bright?", "Yes"),
        ("train:img-b#0", "b.png", "What colour is it?", "blue"),
    ]
    assert all(s.path.parent == images for s in loaded.samples)


def test_llava_malformed_record_names_its_line(tmp_path, images):
    records = _llava_records()
    records[2]["conversations"][1]["from"] = "human"
    path = tmp_path / "val_llava.json"
    path.write_text(json.dumps(records, indent=2))
    text = path.read_text()
    record_line = text[:text.index('"id": "img-b"')].count("\n")  # the line of the record's opening brace
    with pytest.raises(DataError, match=rf"^{path}:{record_line}: conversation turns 1 and 2 must be from human"):
        load_vqa_file(path, "val", LlavaFormat(), images)


def test_llava_broken_json_names_the_line(tmp_path, images):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"id": "x", "image": "a.png",\n   "conversations": [}\n]\n')
    with pytest.raises(DataError, match=rf"^{path}:3: malformed LLaVA JSON"):
        load_vqa_file(path, "train", LlavaFormat(), images)
