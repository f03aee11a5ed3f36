"""Extending vlmexp from outside its source tree: a task (one module + one YAML) and a model adapter
(one module + one model YAML), found through Hydra's search path and ``_target_`` alone."""

from __future__ import annotations

import json
import textwrap

from tests.conftest import REPO, run_cli

TASK_MODULE = '''
from dataclasses import dataclass

from PIL import Image

from vlmexp.messages import ChatRequest, ImagePart, TextPart, chat
from vlmexp.tasks.base import Splits, Task


@dataclass
class Swatch:
    id: str
    colour: str


class SwatchTask(Task):
    """Names the colour of plain swatches; scores how many answers are non-empty."""

    modes = ("eval",)

    def __init__(self, name="swatch", default_mode="eval", trainer=None, evaluator=None, *, count=3):
        super().__init__(name, default_mode, trainer, evaluator)
        self.count = count

    def load_splits(self, run):
        colours = ["red", "green", "blue", "yellow"]
        return Splits(None, None, [Swatch(f"s{i}", colours[i % 4]) for i in range(self.count)])

    def predict(self, engine, samples):
        requests = [ChatRequest(chat(None, ImagePart(Image.new("RGB", (56, 56), s.colour)),
                                     TextPart("What colour is this?")), max_new_tokens=3) for s in samples]
        return [{"id": s.id, "answer": g.text} for s, g in zip(samples, engine.generate(requests))]

    def compute_metrics(self, records):
        return {"num_samples": float(len(records)), "answered": float(sum(1 for r in records if r["answer"]))}
'''

ADAPTER_MODULE = '''
import json
from pathlib import Path

from vlmexp.models.adapters.transformers import TransformersAdapter


class RecordingAdapter(TransformersAdapter):
    """The default adapter, writing down each batch it encodes."""

    def __init__(self, log_file, **names):
        super().__init__(**names)
        self.log_file = Path(log_file)

    def encode(self, processor, requests, *, padding_side="left", texts=None):
        with self.log_file.open("a") as fh:
            fh.write(json.dumps({"requests": len(requests), "padding_side": padding_side}) + "\\n")
        return super().encode(processor, requests, padding_side=padding_side, texts=texts)
'''


def test_a_task_and_an_adapter_from_a_temporary_folder(tmp_path, cache_dir):
    plugins, conf = tmp_path / "plugins", tmp_path / "conf"
    plugins.mkdir()
    (plugins / "swatch_task.py").write_text(TASK_MODULE)
    (plugins / "recording_adapter.py").write_text(ADAPTER_MODULE)
    (conf / "task").mkdir(parents=True)
    (conf / "model").mkdir()
    (conf / "task" / "swatch.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        task:
          name: swatch
          _target_: swatch_task.SwatchTask
          default_mode: eval
          trainer: null
          evaluator:
            _target_: vlmexp.evaluation.loop.PredictionLoop
          count: 3
        """))
    log_file = tmp_path / "encoded.jsonl"
    (conf / "model" / "tiny_recorded.yaml").write_text(textwrap.dedent(f"""\
        defaults: [tiny, _self_]
        name: tiny_recorded
        adapter:
          _target_: recording_adapter.RecordingAdapter
          log_file: {log_file}
        """))
    result = run_cli([f"hydra.searchpath=[file://{conf}]", "task=swatch", "model=tiny_recorded", "hardware=cpu",
                      f"paths.cache_dir={cache_dir}", "logger=none", "engine.batch_size=2"],
                     cwd=tmp_path, env={"PYTHONPATH": f"{plugins}:{REPO}"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "num_samples" in result.stdout and "answered" in result.stdout
    batches = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert batches == [{"requests": 2, "padding_side": "left"}, {"requests": 1, "padding_side": "left"}]


def test_an_unknown_task_option_names_the_search_path_options(tmp_path):
    result = run_cli(["task=swatch", "--cfg", "job"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: task=swatch: no such option")
