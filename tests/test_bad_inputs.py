"""The bad-input corpus (``tests/bad_inputs.py``) through real runs: each case is a counted skip, a
file read as intended, or one line naming the file (and line) at fault; never a traceback, never a hang."""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path

import pytest
from omegaconf import open_dict

from tests.bad_inputs import (
    CASES,
    write_binary_base,
    write_sentiment_base,
    write_smoke_base,
    write_vqa_base,
)
from tests.conftest import REPO, compose_config, run_cli
from vlmexp.data.images import open_image
from vlmexp.errors import VlmexpError
from vlmexp.runner import run

NO_SMOKE = '{"has_smoke": false, "bbox": [0, 0, 0, 0]}'
BASES = {"smoke": write_smoke_base, "vqa": write_vqa_base, "binary": write_binary_base,
         "sentiment": write_sentiment_base}
CASE_SECONDS = 120


def overrides(task: str, root: Path, cache: Path) -> list[str]:
    common = ["mode=eval", "logger=none", f"paths.cache_dir={cache}"]
    data = {"smoke": [f"data.root={root}"],
            "vqa": [f"data.test_file={root / 'test.jsonl'}"] if not (root / "test.json").exists()
            else ["data.format=llava", f"data.test_file={root / 'test.json'}"],
            "binary": [f"data.test_file={root / 'test.jsonl'}"],
            "sentiment": [f"data.root={root}"]}[task]
    return [f"task={task}", *common, *data]


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"no result after {CASE_SECONDS} s")


def run_case(case, tmp_path: Path):
    root = tmp_path / "data"
    BASES[case.task](root)
    case.write(root)
    cfg = compose_config(overrides(case.task, root, tmp_path / "cache"))
    with open_dict(cfg):
        cfg.engine = {"_target_": "tests.helpers.ScriptedEngine",
                      "default": NO_SMOKE if case.task == "smoke" else "no"}
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        return run(cfg, output_dir=tmp_path / "out")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.task}-{c.id}" for c in CASES])
def test_bad_input(case, tmp_path, caplog):
    if case.outcome == "error":
        with pytest.raises(VlmexpError) as err:  # the CLI prints it as one line: "error: <message>"
            run_case(case, tmp_path)
        message = str(err.value)
        assert "\n" not in message and case.expect in message, message
        return
    with caplog.at_level(logging.WARNING):
        metrics = run_case(case, tmp_path)
    assert {key: metrics.get(key) for key in case.expect} == case.expect
    assert case.warning in caplog.text


def test_every_case_is_listed_in_the_readme():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("### Bad input"):]
    listed = set(re.findall(r"^\| `([a-z]+)` \| `([a-z0-9-]+)` \|", table, re.MULTILINE))
    assert listed == {(c.task, c.id) for c in CASES}
    counts = re.search(r"(\d+) cases: (\d+) counted skips, (\d+) read as intended, (\d+) one-line errors", table)
    outcomes = [c.outcome for c in CASES]
    assert counts and [int(n) for n in counts.groups()] == [
        len(CASES), outcomes.count("skipped"), outcomes.count("read"), outcomes.count("error")]


@pytest.mark.parametrize(("name", "expected"), [
    ("cmyk-jpeg", (255, 0, 255)), ("16-bit-png", (128, 128, 128)), ("palette-png", (20, 200, 20)),
    ("transparent-png", (255, 255, 255)), ("one-pixel", (200, 60, 60)),
])
def test_odd_modes_become_the_right_rgb_pixels(name, expected, tmp_path):
    [case] = [c for c in CASES if c.task == "smoke" and c.id == name]
    write_smoke_base(tmp_path)
    case.write(tmp_path)
    [path] = (tmp_path / "seq").glob("f5.*")
    image = open_image(path)
    assert image.mode == "RGB" and image.getpixel((0, 0)) == pytest.approx(expected, abs=2)


@pytest.mark.parametrize(("name", "stderr"), [
    ("latin1-label", r"error: .*/seq/f1\.txt:1: YOLO label file is not UTF-8 text \(byte 0xe9 at column 24; .*\)"),
    ("huge-20000px", None),
])
def test_from_the_command_line_no_traceback(name, stderr, tmp_path):
    """As a user runs it: one line on stderr and exit 2, or a finished run whose warning names the file."""
    [case] = [c for c in CASES if c.task == "smoke" and c.id == name]
    root = tmp_path / "data"
    write_smoke_base(root)
    case.write(root)
    result = run_cli([*overrides("smoke", root, tmp_path / "cache"), "engine._target_=tests.helpers.ScriptedEngine",
                      f"+engine.default='{NO_SMOKE}'"], cwd=tmp_path, timeout=300)
    assert "Traceback" not in result.stderr
    if stderr:
        assert result.returncode == 2 and re.fullmatch(stderr, result.stderr.strip()), result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert "f5.png: image too large to decode (400 MP; PIL's limit is 179 MP)" in result.stderr + result.stdout
