"""Comparing runs in the MLflow UI, as a researcher does: a real 2-job sweep of the tiny model
(``-m task=smoke model=tiny train.lr=1e-3,3e-3``, its checkpoint registered), a real ``mlflow ui`` on
its store, and the system's headless Chromium (Playwright, no browser download) reading the pages.
The screenshots are kept in the folder the module prints: ``--mlflow-ui-shots DIR``, else
``mlflow-ui-shots*`` under pytest's temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # trains the tiny model twice

LIMIT_S = 300
MODEL = "smoke-tiny"
LRS = ("0.001", "0.003")  # how the jobs receive 1e-3 and 3e-3 (Hydra's sweep values)
SWEEP = ["task=smoke", "model=tiny", "hardware=cpu", "mode=train_eval", "train.lr=1e-3,3e-3", "train.epochs=2",
         "data.synthetic.train_sequences=2", "data.synthetic.val_sequences=1", "data.synthetic.test_sequences=1",
         "logger.system_metrics_interval_s=0.5", f"logger.register_model={MODEL}"]
SECTION = "[data-testid='experiment-view-compare-runs-section-header']"


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


@pytest.fixture(scope="module")
def store(tmp_path_factory, cache_dir, tiny_checkpoint):
    """The sweep, run as a user runs it, into its own SQLite store."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow-ui")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=uri)
    process = subprocess.Popen([sys.executable, "-m", "vlmexp", "-m", *SWEEP, f"paths.cache_dir={cache_dir}"],
                               cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        out, _ = process.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        _kill(process)
        pytest.fail(f"the sweep did not end within {LIMIT_S} s")
    assert process.returncode == 0, out[-5000:]
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if "vlmexp.sweep_parent" in r.data.tags]
    children = sorted((r for r in runs if r is not parent), key=lambda r: r.data.params["train.lr"])
    return root, uri, client, experiment, parent, children


@pytest.fixture(scope="module")
def ui(store, tmp_path_factory):
    """``mlflow ui`` on the sweep's store, on a free port of 127.0.0.1."""
    import requests

    root, uri = store[:2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (root / "mlflow-ui.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                               "--port", str(port)], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{base}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert server.poll() is None, (root / "mlflow-ui.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow ui did not answer within 120 s"
            time.sleep(0.5)
        yield base
    finally:
        _kill(server)
        log.close()


@pytest.fixture(scope="module")
def browser(ui, tmp_path_factory, request):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium) to open the MLflow UI with")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install 'vlmexp[dev]' (playwright)")
    shots = Path(request.config.getoption("--mlflow-ui-shots") or tmp_path_factory.mktemp("mlflow-ui-shots"))
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nMLflow UI screenshots: {shots}")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        browser.shots = shots
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A new tab with nothing remembered (the UI keeps unfolded rows and views in the browser's storage)."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.shots = browser.shots
    yield tab
    context.close()


def _open(page, url: str, ready: str) -> None:
    """Go to ``url`` and wait until the text ``ready`` shows."""
    page.goto(url)
    page.get_by_text(ready).first.wait_for()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(page.shots / f"{name}.png"), full_page=True)


def _expand_sweep(page, ui: str, experiment, parent, children, view: str = "TABLE") -> None:
    """The experiment's runs, the sweep's row unfolded to show its jobs, in ``view`` (TABLE, CHART, ARTIFACT)."""
    _open(page, f"{ui}/#/experiments/{experiment.experiment_id}/runs", parent.info.run_name)
    row = page.locator("[role=row]", has_text=parent.info.run_name)
    row.locator("button[data-component-id*='runnamecellrenderer']").first.click()
    for child in children:
        page.get_by_text(child.info.run_name, exact=True).first.wait_for()
    if view != "TABLE":
        page.locator("label", has=page.locator(f"input[name=runs-view-mode][value={view}]")).click()


# -- what the store holds (no browser needed) ------------------------------------------------------
def test_jobs_and_parent_are_named_after_the_swept_values(store):
    *_, parent, children = store
    assert [c.info.run_name for c in children] == [f"smoke tiny hf lr={lr}" for lr in LRS]
    assert parent.info.run_name == f"sweep smoke tiny hf: lr={','.join(LRS)}"
    assert parent.data.params["train.lr"] == ",".join(LRS)
    assert parent.info.status == "FINISHED"
    best = next(c for c in children if c.info.run_id == parent.data.tags["vlmexp.best_run_id"])
    for key, value in best.data.metrics.items():  # sorting by any job metric keeps the parent in place
        if not key.startswith("system/"):
            assert parent.data.metrics[key] == value, key


def test_runs_hold_datasets_table_model_system_metrics_and_description(store, cache_dir):
    import mlflow

    _, uri, client, experiment, _, children = store
    assert experiment.tags["mlflow.note.content"].startswith("Early-fire smoke detection")
    ids = [c.info.run_id for c in children]
    for child in children:
        inputs = {d.dataset.name: d for d in child.inputs.dataset_inputs}
        assert sorted(inputs) == ["smoke-test", "smoke-train", "smoke-val"]
        test = inputs["smoke-test"]
        assert json.loads(test.dataset.profile)["num_samples"] == 8  # 1 sequence of 8 frames
        assert len(test.dataset.digest) == 16 and [t.value for t in test.tags] == ["test"]
        assert any(k.startswith("system/") for k in child.data.metrics)
    mlflow.set_tracking_uri(uri)  # load_table searches the runs through mlflow's current store
    table = client.load_table(experiment.experiment_id, "predictions_table.json", run_ids=ids,
                              extra_columns=["run_id"])
    assert list(table.columns[:5]) == ["id", "reference", "prediction", "raw", "correct"]
    assert table.groupby("run_id").size().to_dict() == {i: 8 for i in ids}
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert sorted(v.run_id for v in versions) == sorted(ids)
    # the registered model loads (vlmexp.load_vlm on the logged checkpoint) and answers
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{max(int(v.version) for v in versions)}")
    frame = next(Path(cache_dir).glob("datasets/synthetic_smoke-*/**/*.jpg"))
    answers = model.predict([{"image": str(frame), "question": "Is there smoke?"}])
    assert isinstance(answers, list) and len(answers) == 1 and isinstance(answers[0], str)


# -- what the UI shows -----------------------------------------------------------------------------
def test_runs_table_names_each_job_by_its_swept_value(store, ui, page):
    *_, experiment, parent, children = store
    _expand_sweep(page, ui, experiment, parent, children)
    names = {r.inner_text() for r in page.locator("[role=row] a").all()}
    assert {f"smoke tiny hf lr={lr}" for lr in LRS} <= names
    assert len({c.info.run_name for c in children}) == 2
    _shot(page, "runs_table")


def test_metric_sections_are_grouped_by_prefix(store, ui, page):
    *_, experiment, parent, children = store
    _expand_sweep(page, ui, experiment, parent, children, "CHART")
    page.get_by_text("System metrics").first.wait_for()
    page.wait_for_function(f"document.querySelectorAll(\"{SECTION}\").length >= 2")
    sections = {}
    for header in page.locator(SECTION).all():
        title, *rest = header.inner_text().splitlines()
        sections[title] = int(rest[0].strip("()")) if rest else 0
    _shot(page, "chart_sections")
    assert sections["System metrics"] > 0  # the jobs' system/... metrics, under their own section
    assert {"train", "val", "test"} <= set(sections), sections  # train/loss, val/loss, test/f1, ...


def test_run_page_shows_datasets_and_registered_model(store, ui, page):
    *_, experiment, _, children = store
    child = children[0]
    _open(page, f"{ui}/#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}", "Registered models")
    digest = next(d.dataset.digest for d in child.inputs.dataset_inputs if d.dataset.name == "smoke-train")
    page.get_by_text(f"smoke-train ({digest})").first.wait_for()
    page.get_by_text(f"Registered models {MODEL}").first.wait_for()  # the section, the model in it
    _shot(page, "run_page")
    _open(page, f"{ui}/#/models", MODEL)
    _shot(page, "registered_models")


def test_artifact_view_compares_predictions_sample_by_sample(store, ui, page):
    *_, experiment, parent, children = store
    _expand_sweep(page, ui, experiment, parent, children, "ARTIFACT")
    page.get_by_text("predictions_table.json").first.wait_for()
    page.get_by_text("Compare:").first.wait_for()
    text = page.inner_text("body")
    assert "No evaluation tables logged" not in text
    assert all(c.info.run_name in text for c in children)
    _shot(page, "predictions_table")


def test_compare_view_differs_only_in_the_swept_param(store, ui, page):
    *_, experiment, _, children = store
    runs = json.dumps([c.info.run_id for c in children])
    _open(page, f"{ui}/#/compare-runs?runs={runs}&experiments={json.dumps([experiment.experiment_id])}",
          "Show diff only")
    header = page.inner_text("body")
    assert all(c.info.run_name in header for c in children)
    page.get_by_text("Show diff only").first.click()  # the parameters' switch
    page.wait_for_function("document.body.innerText.split('Show diff only')[1].split('Metrics')[0]"
                           ".trim().split('\\n').length === 1")
    params = page.inner_text("body").split("Show diff only")[1].split("Metrics")[0].strip().splitlines()
    _shot(page, "compare_diff_only")
    assert [line.split("\t")[0] for line in params] == ["train.lr"]
    assert sorted(params[0].split("\t")[1:]) == list(LRS)
