"""``vlmexp report``: a leaderboard over a real MLflow experiment with three scripted smoke runs on one
dataset (and one on other data, left out), opened in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import sys
from html.parser import HTMLParser

import mlflow
import pytest

from tests.conftest import REPO, compose_config
from vlmexp.report import Row, pareto_front
from vlmexp.runner import run

SMOKE = '{"has_smoke": true, "bbox": [0.5, 0.5, 0.2, 0.2]}'
CLEAR = '{"has_smoke": false, "bbox": [0, 0, 0, 0]}'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def scripted_run(cache_dir, out, model: str, latency: float, *extra) -> dict:
    cfg = compose_config([f"paths.cache_dir={cache_dir}", "mode=eval", "task=smoke", f"model={model}",
                          "engine._target_=tests.helpers.ScriptedEngine", f"+engine.latency_s={latency}", *extra])
    return run(cfg, output_dir=out)


class TableText(HTMLParser):
    """The text of each cell of table#leaderboard, row by row."""

    def __init__(self):
        super().__init__()
        self.rows, self.inside, self.cell = [], False, None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and ("id", "leaderboard") in attrs:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def chromium(*args, tmp_path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def test_pareto_front_keeps_rows_no_other_beats_on_both():
    rows = [Row(m, "e", "-", m, m, {"test/f1": f1, "perf/latency_p50_s": lat})
            for m, f1, lat in [("a", 0.9, 2.0), ("b", 0.8, 1.0), ("c", 0.7, 1.5), ("d", 0.5, 0.2), ("e", 0.5, 0.3)]]
    assert [r.model for r in pareto_front(rows, "test/f1")] == ["d", "b", "a"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium) to open "
                                              "the HTML report headless")
def test_report_leaderboard_of_three_runs(cache_dir, tmp_path):
    smoke = scripted_run(cache_dir, tmp_path / "a", "tiny", 0.5, f"+engine.default='{SMOKE}'")
    clear = scripted_run(cache_dir, tmp_path / "b", "qwen7b", 0.1, f"+engine.default='{CLEAR}'")
    varied = scripted_run(cache_dir, tmp_path / "c", "qwen2_5_vl_3b", 0.2, f"+engine.varied=['{SMOKE}','{CLEAR}']")
    scripted_run(cache_dir, tmp_path / "d", "tiny", 0.01, f"+engine.default='{SMOKE}'", "data.limit=8")  # other data
    assert smoke["f1"] > varied["f1"] > clear["f1"] == 0.0
    first = mlflow.search_runs(experiment_names=["smoke"], output_format="list", order_by=["attributes.start_time"])[0]
    fingerprint = first.data.tags["vlmexp.dataset_fingerprint"]

    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "vlmexp", "report", "smoke", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"smoke (dataset {fingerprint}), by test/f1:"
    assert [line.split()[0] for line in lines[3:6]] == ["tiny", "qwen2_5_vl_3b", "qwen7b"]
    markdown = (out / "leaderboard.md").read_text()
    assert "Runs on other data left out: 1." in markdown
    f1 = f"{smoke['f1']:.2f} [{smoke['f1_ci_low']:.2f}, {smoke['f1_ci_high']:.2f}]"
    assert f"| tiny | ScriptedEngine | - | {f1} |" in markdown

    page = out / "leaderboard.html"
    dom = chromium("--dump-dom", page.as_uri(), tmp_path=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = TableText()
    parser.feed(dom.stdout)
    header, *rows = parser.rows
    assert header[:4] == ["model", "engine", "preset", "test/f1"] and "latency p50 (s)" in header
    assert [r[0] for r in rows] == ["tiny", "qwen2_5_vl_3b", "qwen7b"]
    assert rows[0][3] == f1 and rows[2][3] == "0.00 [0.00, 0.00]"
    latency = header.index("latency p50 (s)")
    assert [r[latency] for r in rows] == ["0.500", "0.200", "0.100"]
    shot = tmp_path / "leaderboard.png"
    taken = chromium(f"--screenshot={shot}", "--window-size=1400,1000", page.as_uri(), tmp_path=tmp_path)
    assert taken.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

    [report] = [r for r in mlflow.search_runs(experiment_names=["smoke"], output_format="list")
                if r.data.tags.get("vlmexp.report") == "true"]
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(report.info.run_id)}
    assert artifacts == {"leaderboard.md", "leaderboard.html", "pareto.png"} and report.data.metrics["rows"] == 3
