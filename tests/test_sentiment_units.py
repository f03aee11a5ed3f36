"""Sentiment task pieces: the labels file, answer parsing, score decisions, config checks."""

from __future__ import annotations

import math

import pytest

from tests.helpers import GenerateOnlyScriptedEngine, ScriptedEngine
from tests.videos import write_labels
from vlmexp.data.sentiment import load_golden_labels
from vlmexp.engines.hf import HFEngine
from vlmexp.errors import ConfigError, DataError
from vlmexp.tasks.sentiment import SentimentTask
from vlmexp.tasks.sentiment_answers import decide_by_score, parse_label, softmax

LEXICON = {"Positive": ["happy", "joyful", "very pleased"], "Negative": ["sad", "angry"]}


# -- labels file ------------------------------------------------------------------------------------
def test_labels_any_case_or_digits_caption_optional(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "b.avi").write_bytes(b"x")
    path = tmp_path / "golden_labels.csv"
    path.write_text("\ufeffvideo_name, label ,caption\na.mp4,POSITIVE,hello there\nb.avi, negative ,\n"
                    "c.mp4,1,\nd.mp4,0,bye\n", encoding="utf-8")
    videos = load_golden_labels(tmp_path)
    assert [(v.id, v.label, v.caption, v.row) for v in videos] == [
        ("a.mp4", "Positive", "hello there", 2), ("b.avi", "Negative", "", 3),
        ("c.mp4", "Positive", "", 4), ("d.mp4", "Negative", "bye", 5)]
    assert videos[0].path == tmp_path / "a.mp4"
    assert [v.id for v in load_golden_labels(tmp_path, limit=2)] == ["a.mp4", "b.avi"]
    no_caption = write_labels(tmp_path / "other.csv", [["Negative", "a.mp4"]], header=("label", "video_name"))
    (video,) = load_golden_labels(tmp_path, "other.csv")  # relative to data.root
    assert (video.id, video.label, video.caption) == ("a.mp4", "Negative", "")
    assert load_golden_labels(tmp_path, str(no_caption))[0].id == "a.mp4"  # absolute


@pytest.mark.parametrize(("text", "message"), [
    ("video_name,caption\na.mp4,hi\n", r"golden_labels\.csv: missing column\(s\) label \(found: video_name, caption"),
    ("name,label\na.mp4,1\n", r"missing column\(s\) video_name"),
    ("video_name,label\na.mp4,Positive\nb.mp4,neutral\n", r"golden_labels\.csv:3: unknown label 'neutral' for b\.mp4"),
    ("video_name,label\na.mp4,\n", r"golden_labels\.csv:2: unknown label '' for a\.mp4"),
    ("video_name,label\n,Positive\n", r"golden_labels\.csv:2: empty video_name"),
    ("video_name,label\na.mp4,1\nb.mp4,0\na.mp4,0\n", r"golden_labels\.csv:4: duplicate video_name 'a\.mp4' "
                                                        r"\(first at line 2\)"),
    ("video_name,label\n", r"golden_labels\.csv: no rows"),
])
def test_bad_labels_file_names_file_row_and_value(tmp_path, text, message):
    (tmp_path / "golden_labels.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        load_golden_labels(tmp_path)


def test_missing_labels_file_and_root(tmp_path):
    with pytest.raises(DataError, match=r"golden_labels\.csv: no labels file"):
        load_golden_labels(tmp_path)
    with pytest.raises(DataError, match=r"data\.labels_file=nope\.csv: no such file"):
        load_golden_labels(tmp_path, "nope.csv")
    with pytest.raises(ConfigError, match="task=sentiment needs data.root"):
        load_golden_labels(None)


def test_missing_videos_are_kept_as_samples(tmp_path, caplog):
    write_labels(tmp_path / "golden_labels.csv", [["here.mp4", "1", ""], ["gone.mp4", "0", ""]])
    (tmp_path / "here.mp4").write_bytes(b"x")
    assert [v.id for v in load_golden_labels(tmp_path)] == ["here.mp4", "gone.mp4"]
    assert "1 of 2 listed videos are missing" in caplog.text and "gone.mp4" in caplog.text


# -- parsing generated answers ----------------------------------------------------------------------
@pytest.mark.parametrize(("answer", "label", "how"), [
    ("Positive", "Positive", "label"),
    ("  negative.\n", "Negative", "label"),
    ('"POSITIVE"', "Positive", "label"),
    ("The sentiment is Negative", "Negative", "label"),
    ("Sentiment: positive!", "Positive", "label"),
    ("The signer looks sad and angry.", "Negative", "lexicon"),
    ("happy, joyful, though a bit sad", "Positive", "lexicon"),  # 2 positive keywords vs 1
    ("She is very pleased.", "Positive", "lexicon"),  # multi-word keyword
    ("not happy at all, rather sad", "Negative", "lexicon"),  # a negated keyword does not count
    ("Positive or Negative, hard to say.", None, None),  # names both labels: ambiguous
    ("happy but sad", None, None),  # lexicon tie
    ("I cannot tell.", None, None),
    ("", None, None),
    ("positively unclear", None, None),  # a label must be a whole word
])
def test_parse_label(answer, label, how):
    parsed = parse_label(answer, ("Positive", "Negative"), LEXICON)
    assert (parsed.label, parsed.parsed_by) == (label, how)


def test_decide_by_score_is_softmax_of_label_logprobs():
    label, confidence = decide_by_score([-0.2, -2.5], ("Positive", "Negative"), "Negative")
    assert label == "Positive" and confidence == pytest.approx(1 / (1 + math.exp(-2.3)))
    label, confidence = decide_by_score([-30.0, -29.0], ("Positive", "Negative"), "Negative")
    assert label == "Negative" and confidence == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert decide_by_score([-4.0, -4.0], ("Positive", "Negative"), "Positive") == ("Positive", 0.5)
    assert decide_by_score([-4.0, -4.0], ("Positive", "Negative"), "Negative") == ("Negative", 0.5)
    assert sum(softmax([-1000.0, -1001.0, -999.0])) == pytest.approx(1.0)


# -- config checks --------------------------------------------------------------------------------
def _task(**overrides) -> SentimentTask:
    return SentimentTask(**{"prompt": "Positive or Negative?", "lexicon": LEXICON, **overrides})


@pytest.mark.parametrize(("overrides", "message"), [
    ({"fallback_label": "Neutral"}, r"task\.fallback_label=Neutral: must be one of the labels \(Positive, Negative\)"),
    ({"fallback_label": "1"}, r"task\.fallback_label=1: must be one of the labels"),
    ({"frame_mode": "clip"}, r"task\.frame_mode=clip: expected one of center, frames, video"),
    ({"decision": "vote"}, r"task\.decision=vote: expected one of auto, score, generate"),
    ({"num_frames": 0}, r"task\.num_frames=0: must be >= 1"),
    ({"frame_size": 8}, r"task\.frame_size=8: must be >= 28"),
    ({"lexicon": {"Neutral": ["meh"]}}, r"task\.lexicon\.Neutral: not a label"),
])
def test_bad_task_config(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _task(**overrides)


def test_fallback_label_any_case():
    assert _task(fallback_label="positive").fallback_label == "Positive"


def test_decision_and_frame_mode_against_engine_capabilities():
    assert _task().resolve_decision(HFEngine) == "score"
    assert _task().resolve_decision(GenerateOnlyScriptedEngine) == "generate"
    assert _task(decision="generate").resolve_decision(HFEngine) == "generate"
    assert _task(frame_mode="video").resolve_decision(HFEngine) == "score"
    with pytest.raises(ConfigError, match=r"task\.decision=score: engine GenerateOnlyScriptedEngine cannot score"):
        _task(decision="score").resolve_decision(GenerateOnlyScriptedEngine)
    with pytest.raises(ConfigError, match=r"task\.frame_mode=video: engine ScriptedEngine takes no video input"):
        _task(frame_mode="video").resolve_decision(ScriptedEngine)
    with pytest.raises(ConfigError, match="ScriptedEngine takes no video input"):
        _task(frame_mode="video").resolve_decision(ScriptedEngine())  # an instance, as predict() passes


# -- config and preset ----------------------------------------------------------------------------
SEED_000_PROMPT = """Analyze the emotional sentiment expressed in this sign language video.

Focus on:
- Facial expressions of the signer
- Body language and gestures
- Overall emotional tone conveyed
- Context from the signing content

Classify the sentiment as either:
- Positive: Happy, joyful, optimistic, enthusiastic, satisfied emotions
- Negative: Sad, angry, frustrated, disappointed, worried, stressed emotions

Respond with ONLY one word: either "Positive" or "Negative"."""


@pytest.mark.parametrize("engine", ["hf", "ollama"])
def test_seed_000_preset_composes_for_hf_and_ollama(engine):
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    cfg = compose_config(["+experiment=sentiment_golden_qwen", f"engine={engine}", "hardware=cpu"])
    assert (cfg.task.name, cfg.model.name, cfg.model.fallback) == ("sentiment", "qwen7b", "qwen2_5_vl_3b")
    assert (cfg.task.num_frames, cfg.task.frame_mode, cfg.task.frame_size) == (8, "center", 224)
    assert cfg.engine._target_.endswith({"hf": "HFEngine", "ollama": "OllamaEngine"}[engine])
    assert str(cfg.mode.value) == "eval" and cfg.data.labels_file is None
    task = instantiate(cfg.task, _recursive_=False)
    assert task.prompt == SEED_000_PROMPT
    assert task.fallback_label == "Negative" and task.decision == "auto"
    assert set(task.lexicon) == {"Positive", "Negative"}
    if engine == "hf":
        from vlmexp.config.validate import validate

        validate(cfg)
        assert task.resolve_decision(HFEngine) == "score"
