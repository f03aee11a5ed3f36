"""The smoke JSON contract: every accepted form, every BAD_JSON form, the grounding conversion."""

from __future__ import annotations

import pytest

from vlmexp.tasks.smoke_contract import format_smoke_answer, parse_smoke_answer


@pytest.mark.parametrize("text", [
    '{"has_smoke": true, "bbox": [0.5, 0.4, 0.2, 0.1]}',
    '```json\n{"has_smoke": true, "bbox": [0.5, 0.4, 0.2, 0.1]}\n```',
    '```\n{"has_smoke": true, "bbox": [0.5, 0.4, 0.2, 0.1]}\n```',
    'Sure. The answer is {"has_smoke": true, "bbox": [0.5, 0.4, 0.2, 0.1]} as requested.',
    '  {"bbox": [0.5, 0.4, 0.2, 0.1], "has_smoke": true}  ',
])
def test_bare_fenced_and_embedded_objects_parse(text):
    answer = parse_smoke_answer(text)
    assert answer.parse_ok and answer.has_smoke
    assert answer.boxes == [[0.5, 0.4, 0.2, 0.1]]
    assert answer.confidence is None


def test_no_smoke_answer_has_no_box():
    answer = parse_smoke_answer('{"has_smoke": false, "bbox": [0, 0, 0, 0]}')
    assert answer.parse_ok and not answer.has_smoke and answer.boxes == []


def test_grounding_box_is_converted_with_the_size_sent():
    # 200 x 100 image: x 20..60, y 10..50 -> centre (40/200, 30/100), size (40/200, 40/100)
    answer = parse_smoke_answer('[{"bbox_2d": [20, 10, 60, 50], "label": "smoke"}]', (200, 100))
    assert answer.parse_ok and answer.has_smoke
    assert answer.boxes == [pytest.approx([0.2, 0.3, 0.2, 0.4])]


def test_grounding_list_keeps_every_box_and_the_best_confidence():
    text = '```json\n[{"bbox_2d": [0, 0, 50, 50], "confidence": 0.4}, {"bbox_2d": [50, 50, 100, 100], ' \
           '"confidence": 0.7}]\n```'
    answer = parse_smoke_answer(text, (100, 100))
    assert answer.boxes == [[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]]
    assert answer.confidence == 0.7


def test_grounding_with_has_smoke_false_means_no_smoke():
    answer = parse_smoke_answer('{"has_smoke": false, "bbox_2d": [0, 0, 0, 0]}', (64, 64))
    assert answer.parse_ok and not answer.has_smoke and answer.boxes == []


def test_confidence_is_kept_only_when_valid():
    answer = parse_smoke_answer('{"has_smoke": true, "bbox": [0.5, 0.5, 0.1, 0.1], "confidence": 0.25}')
    assert answer.confidence == 0.25
    for bad in ('"high"', "1.5", "true"):
        answer = parse_smoke_answer('{"has_smoke": true, "bbox": [0.5, 0.5, 0.1, 0.1], "confidence": ' + bad + "}")
        assert answer.parse_ok and answer.confidence is None


@pytest.mark.parametrize("text", [
    "BAD_JSON",                                                   # the prompt's own failure word
    "There is a lot of smoke on the left.",                       # no object at all
    "",                                                           # empty answer
    '{"has_smoke": "yes", "bbox": [0.5, 0.5, 0.2, 0.2]}',         # wrong type of has_smoke
    '{"has_smoke": 1, "bbox": [0.5, 0.5, 0.2, 0.2]}',             # an int is not a bool
    '{"has_smoke": true}',                                        # missing bbox
    '{"bbox": [0.5, 0.5, 0.2, 0.2]}',                             # missing has_smoke
    '{"has_smoke": true, "bbox": [0.5, 0.5, 0.2]}',               # three numbers
    '{"has_smoke": true, "bbox": ["0.5", "0.5", "0.2", "0.2"]}',  # strings
    '{"has_smoke": true, "bbox": [true, 0.5, 0.2, 0.2]}',         # a bool is not a number
    '{"has_smoke": true, "bbox": [0.5, 0.5, 0.2, 0.2]',           # cut short
    '[1, 2, 3, 4]',                                               # a list of numbers
])
def test_bad_json_answers(text):
    answer = parse_smoke_answer(text, (100, 100))
    assert not answer.parse_ok and not answer.has_smoke and answer.boxes == []


def test_grounding_needs_the_image_size():
    assert not parse_smoke_answer('{"bbox_2d": [0, 0, 10, 10]}', None).parse_ok


def test_training_target_round_trips():
    target = format_smoke_answer([[0.512, 0.25, 0.3, 0.125]])
    assert target == '{"has_smoke": true, "bbox": [0.51, 0.25, 0.3, 0.12]}'
    assert parse_smoke_answer(target).boxes == [[0.51, 0.25, 0.3, 0.12]]
    assert not parse_smoke_answer(format_smoke_answer([])).has_smoke
