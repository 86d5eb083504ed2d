"""The browsing commands in headless Chromium (Debian's, driven by Playwright). The MLflow UI lists
a study's parent run and its trial runs, and a trial's sample picture renders; the best trial is
tagged and its metric charts draw; optuna-dashboard
(`make dashboard`) serves the study and its trials. Screenshots: test-artifacts/."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import pytest
from mlflow.tracking import MlflowClient
from slow_helpers import (
    ARTIFACTS_DIR,
    PYTHON,
    SMOKE,
    TINY_STUDY,
    Service,
    child_env,
    free_port,
    in_ci,
    no_telemetry,
)

from pipeline.study.spec import load_study_file
from pipeline.study.summary import ML_MODE, UI_ADDRESS, ui_links
from pipeline.study.sweep import run_sweep

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
UI_TIMEOUT_MS = 90_000  # the React app on 2 busy cores
# In the page: an artifact fetched through the UI's endpoint, its bytes and decoded size.
FETCH_IMAGE = """async (url) => {
            const response = await fetch(url);
            const bytes = new Uint8Array(await response.arrayBuffer());
            const img = new Image();
            img.src = url;
            await img.decode();
            return {status: response.status, head: Array.from(bytes.slice(0, 8)),
                    size: bytes.length, width: img.naturalWidth, height: img.naturalHeight};
        }"""


@pytest.fixture
def chromium_path() -> str:
    if shutil.which(CHROMIUM) is None:
        message = f"{CHROMIUM} not found (apt-get install chromium)"
        if in_ci():
            pytest.fail(f"{message}; CI=true, so this is an error, not a skip")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """The smoke study, run once for this module into a tmp MLflow store and journal; returns
    (tracking URI, parent run id, journal path)."""
    root = tmp_path_factory.mktemp("smoke")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    journal = root / "optuna.journal"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("OPTUNA_STORAGE", raising=False)  # as conftest's _isolated does per test
        no_telemetry(mp)
        mp.chdir(root)
        summary = run_sweep(load_study_file(SMOKE), storage=str(journal), progress=False)
    return uri, summary.parent_run_id, journal


@pytest.fixture
def smoke_store(smoke_study: tuple[str, str, Path],
                monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, Path]:
    """``smoke_study``, with this test's MLflow client pointed at its store, telemetry off."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", smoke_study[0])
    no_telemetry(monkeypatch)
    return smoke_study


@pytest.fixture
def mlflow_ui(smoke_store: tuple[str, str, Path], tmp_path: Path) -> Iterator[str]:
    """``python -m pipeline ui`` on the tmp store, 127.0.0.1:<free port>; its base URL."""
    port = free_port()
    ui = Service("MLflow UI", [PYTHON, "-m", "pipeline", "ui", "--port", str(port)],
                 log=tmp_path / "mlflow-ui.log", cwd=tmp_path,
                 env=child_env(MLFLOW_TRACKING_URI=smoke_store[0]))
    try:
        url = f"http://127.0.0.1:{port}"
        ui.wait_http(f"{url}/health", timeout=240)  # ~20 s with its one worker on 2 cores
        yield url
    finally:
        ui.stop()


@contextlib.contextmanager
def local_page(chromium_path: str, failure_screenshot: Path) -> Iterator[Page]:
    """A headless Chromium page that may only reach 127.0.0.1 (the UIs may try fonts,
    telemetry, docs); a screenshot of the page if the test fails while it is open."""
    from playwright.sync_api import Route, sync_playwright

    ARTIFACTS_DIR.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        blocked: list[str] = []

        def local_only(route: Route) -> None:
            if urlsplit(route.request.url).hostname == "127.0.0.1":
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort()

        context.route("**/*", local_only)
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield page
        except BaseException:
            page.screenshot(path=failure_screenshot)
            raise
        finally:
            browser.close()
            if blocked:
                print(f"blocked {len(blocked)} requests off 127.0.0.1: {sorted(set(blocked))}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mlflow_ui_lists_study_and_shows_samples(smoke_store: tuple[str, str, Path],
                                                 mlflow_ui: str, chromium_path: str,
                                                 tmp_path: Path) -> None:
    uri, parent_id, _ = smoke_store
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_id)
    experiment = parent.info.experiment_id
    children = client.search_runs([experiment],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    trial_names = sorted(r.info.run_name for r in children)
    assert len(trial_names) == 4 and trial_names[0].startswith("trial-000 "), trial_names
    # A pruned trial stops before its final picture; a finished one has samples/final.png.
    pictured = sorted((r for r in children if r.info.status == "FINISHED"),
                      key=lambda r: r.info.run_name)
    assert pictured, "no trial of the smoke study finished"
    trial = pictured[0]
    assert "samples/final.png" in {a.path for a in client.list_artifacts(trial.info.run_id,
                                                                         "samples")}

    ARTIFACTS_DIR.mkdir(exist_ok=True)
    for stale in ("mlflow-runs.png", "mlflow-sample.png", "mlflow-failure.png"):
        (ARTIFACTS_DIR / stale).unlink(missing_ok=True)  # no screenshot from an earlier run
    best = client.search_runs([experiment], filter_string="tags.best = 'true'")[0]
    best_value = f"{best.data.metrics['objective']:.4g}"
    with local_page(chromium_path, ARTIFACTS_DIR / "mlflow-failure.png") as page:
        # The sweep's printed link lands on the training runs, not on GenAI traces (MLflow 3's
        # default mode), and their first row names the best trial and its objective: no click.
        link = ui_links(experiment, parent_id, best.info.run_id)["runs"]
        page.goto(link.replace(UI_ADDRESS, mlflow_ui))
        parent_row = page.locator('[role="row"]', has_text="study smoke").first
        parent_row.wait_for()
        assert f"best fid {best_value} · trial {best.data.tags['optuna_trial']}" in (
            parent_row.text_content() or "")
        page.screenshot(path=ARTIFACTS_DIR / "mlflow-landing.png")
        # Its trials once expanded: complete ones end with their value, pruned ones [pruned].
        expand = parent_row.locator('button[data-component-id*="runnamecellrenderer"]')
        expand.click()
        for name in trial_names:
            page.get_by_text(name, exact=True).first.wait_for()
        assert any(name.endswith(f" = {best_value}") for name in trial_names), trial_names
        states = {r.data.tags.get("optuna_state") for r in children}
        if "PRUNED" in states:
            assert any(" [pruned] " in name for name in trial_names), trial_names
        page.screenshot(path=ARTIFACTS_DIR / "mlflow-runs.png")

        # The Models tab lists the trials' generators (MLflow 3 logged models).
        page.goto(f"{mlflow_ui}/#/experiments/{experiment}/models{ML_MODE}")
        page.get_by_text("generator", exact=True).first.wait_for()
        page.screenshot(path=ARTIFACTS_DIR / "mlflow-models.png")

        # The trial's artifacts view, with samples/final.png selected: the UI fetches the
        # file and previews it as an <img> from a blob: URL, which the browser must have
        # decoded (nonzero natural size, the same as the file's below).
        page.goto(f"{mlflow_ui}/#/experiments/{experiment}/runs/{trial.info.run_id}"
                  f"/artifacts/samples/final.png")
        page.get_by_text(trial.info.run_name, exact=True).first.wait_for()
        page.get_by_text("samples/final.png", exact=True).first.wait_for()
        preview = page.locator('img[src^="blob:"]').first
        preview.wait_for()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=preview.element_handle())
        shown = preview.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        page.screenshot(path=ARTIFACTS_DIR / "mlflow-sample.png")

        # The same picture straight from the UI's artifact endpoint: a PNG.
        fetched = page.evaluate(FETCH_IMAGE,
                                f"get-artifact?path=samples/final.png&run_uuid={trial.info.run_id}")
        # the slider's last step: the final picture too, as large
        steps = [a.path for a in client.list_artifacts(trial.info.run_id, "images")
                 if a.path.endswith(".png")]
        last = max(steps, key=lambda path: int(path.split("+")[2]))
        last_step = page.evaluate(FETCH_IMAGE,
                                  f"get-artifact?path={quote(last)}&run_uuid={trial.info.run_id}")
    assert last_step["status"] == 200 and last_step["width"] >= 600, (last, last_step)

    assert shown[0] > 0 and shown[1] > 0, shown
    assert fetched["status"] == 200, fetched
    assert bytes(fetched["head"]) == b"\x89PNG\r\n\x1a\n", fetched
    assert fetched["width"] > 0 and fetched["height"] > 0, fetched
    assert (fetched["width"], fetched["height"]) == tuple(shown)
    assert fetched["width"] >= 600, fetched  # large enough to see the modes
    local = Path(client.download_artifacts(trial.info.run_id, "samples/final.png",
                                           str(tmp_path)))
    assert fetched["size"] == local.stat().st_size


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mlflow_ui_marks_the_best_trial_and_charts_its_metrics(
        smoke_store: tuple[str, str, Path], mlflow_ui: str, chromium_path: str) -> None:
    """The study's best trial carries best=true (and no other run does); its run page shows the
    tag, and its metric charts draw lines through the per-epoch points."""
    import optuna

    from pipeline.study.storage import open_storage
    from pipeline.study.store import RUN_ATTR

    uri, parent_id, journal = smoke_store
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_run(parent_id).info.experiment_id
    study = optuna.load_study(study_name="smoke", storage=open_storage(str(journal)))
    best_run_id = study.best_trial.user_attrs[RUN_ATTR]
    marked = client.search_runs([experiment], filter_string="tags.best = 'true'")
    assert [r.info.run_id for r in marked] == [best_run_id]
    best = marked[0]
    epochs = [m.step for m in client.get_metric_history(best_run_id, "val/fid")]
    assert len(epochs) >= 2, epochs

    (ARTIFACTS_DIR / "mlflow-best.png").unlink(missing_ok=True)
    with local_page(chromium_path, ARTIFACTS_DIR / "mlflow-best-failure.png") as page:
        # The run's overview shows its tags as chips, "best: true" among them.
        page.goto(f"{mlflow_ui}/#/experiments/{experiment}/runs/{best_run_id}")
        page.get_by_text(best.info.run_name, exact=True).first.wait_for()
        page.get_by_text(re.compile(r"^\s*best\s*:\s*true\s*$")).first.wait_for()

        # Its metrics tab: plotly line charts whose traces pass through the logged points.
        page.goto(f"{mlflow_ui}/#/experiments/{experiment}/runs/{best_run_id}/model-metrics")
        page.locator(".js-plotly-plot").first.wait_for()
        # The charts are sorted by name and drawn as they scroll into view: the one-point
        # cost/ and floor/ charts come first, so filter to the per-epoch FID.
        page.get_by_placeholder(re.compile("search", re.I)).first.fill("val/fid")
        page.wait_for_function("""() => [...document.querySelectorAll(
            '.js-plotly-plot .scatterlayer path.js-line')].some(
            p => (p.getAttribute('d') || '').split(/[LM]/).length > 2)""")
        vertices = page.evaluate("""() => Math.max(...[...document.querySelectorAll(
            '.js-plotly-plot .scatterlayer path.js-line')].map(
            p => (p.getAttribute('d') || '').split(/[LM]/).length - 1))""")
        page.screenshot(path=ARTIFACTS_DIR / "mlflow-best.png")
    # a line through at least the per-epoch points of one metric
    assert vertices >= len(epochs), vertices


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_optuna_dashboard_serves_the_study(smoke_store: tuple[str, str, Path],
                                           chromium_path: str, tmp_path: Path) -> None:
    """``python -m pipeline dashboard`` (what ``make dashboard`` runs) on the study's journal."""
    journal = smoke_store[2]
    port = free_port()
    dashboard = Service("optuna-dashboard", [PYTHON, "-m", "pipeline", "dashboard", "--storage",
                                             str(journal), "--port", str(port)],
                        log=tmp_path / "dashboard.log", cwd=tmp_path, env=child_env())
    url = f"http://127.0.0.1:{port}"
    for stale in ("dashboard-study.png", "dashboard-failure.png"):
        (ARTIFACTS_DIR / stale).unlink(missing_ok=True)
    try:
        dashboard.wait_http(f"{url}/api/studies", timeout=120)
        with urllib.request.urlopen(f"{url}/api/studies", timeout=30) as response:
            summaries = json.load(response)["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["smoke"]
        study_id = summaries[0]["study_id"]
        with urllib.request.urlopen(f"{url}/api/studies/{study_id}?after=0",
                                    timeout=30) as response:
            trials = json.load(response)["trials"]
        assert len(trials) == 4
        assert {t["state"] for t in trials} <= {"Complete", "Pruned"}

        with local_page(chromium_path, ARTIFACTS_DIR / "dashboard-failure.png") as page:
            page.goto(f"{url}/dashboard/studies/{study_id}")
            page.get_by_text(f"smoke (id={study_id})", exact=True).first.wait_for()
            # The optimization-history card and its plotly chart (the sidebar has a hidden
            # "History" label too, hence the heading role).
            page.get_by_role("heading", name="History", exact=True).wait_for()
            page.locator(".js-plotly-plot").first.wait_for()
            # the objective by its metric's name (study.set_metric_names), not "Objective 0"
            page.get_by_text("val/fid").first.wait_for()
            page.screenshot(path=ARTIFACTS_DIR / "dashboard-study.png")
    finally:
        dashboard.stop()


TWO_OBJECTIVES = TINY_STUDY + """
description: two objectives for the browser test
budget: {n_trials: 4, epochs: 2}
objectives:
  - {metric: val/pacgan_score, direction: maximize, last_k: 1}
  - {metric: cost/g_params, direction: minimize}
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_pareto_front_in_mlflow_and_optuna_dashboard(chromium_path: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A two-objective study: the parent run's plots/pareto_front.html renders as Optuna's
    plotly chart in the MLflow UI, and optuna-dashboard shows the front under the objectives'
    metric names (not "Objective 0")."""
    from pipeline.study.spec import parse_study

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    journal = tmp_path / "optuna.journal"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    no_telemetry(monkeypatch)
    summary = run_sweep(parse_study(TWO_OBJECTIVES, default_name="front"), storage=str(journal),
                        progress=False)
    assert summary.front
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_run(summary.parent_run_id).info.experiment_id
    for stale in ("mlflow-pareto.png", "dashboard-pareto.png", "pareto-failure.png"):
        (ARTIFACTS_DIR / stale).unlink(missing_ok=True)

    port = free_port()
    ui = Service("MLflow UI", [PYTHON, "-m", "pipeline", "ui", "--port", str(port)],
                 log=tmp_path / "mlflow-ui.log", cwd=tmp_path,
                 env=child_env(MLFLOW_TRACKING_URI=uri))
    dport = free_port()
    dashboard = Service("optuna-dashboard", [PYTHON, "-m", "pipeline", "dashboard", "--storage",
                                             str(journal), "--port", str(dport)],
                        log=tmp_path / "dashboard.log", cwd=tmp_path, env=child_env())
    try:
        url, durl = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{dport}"
        ui.wait_http(f"{url}/health", timeout=240)
        dashboard.wait_http(f"{durl}/api/studies", timeout=120)
        with local_page(chromium_path, ARTIFACTS_DIR / "pareto-failure.png") as page:
            # MLflow previews an .html artifact in a sandboxed iframe: Optuna's plotly page
            page.goto(f"{url}/#/experiments/{experiment}/runs/{summary.parent_run_id}"
                      f"/artifacts/plots/pareto_front.html")
            frame = page.locator("iframe").first
            frame.wait_for()
            page.frame_locator("iframe").first.locator(".js-plotly-plot").first.wait_for()
            inner = page.frame_locator("iframe").first.locator(".js-plotly-plot").first
            points = inner.locator(".scatterlayer .point").count()
            title = inner.locator(".gtitle").first.text_content()
            page.screenshot(path=ARTIFACTS_DIR / "mlflow-pareto.png")
            assert points >= len(summary.front), points
            assert "Pareto" in (title or ""), title

            with urllib.request.urlopen(f"{durl}/api/studies", timeout=30) as response:
                study_id = json.load(response)["study_summaries"][0]["study_id"]
            page.goto(f"{durl}/dashboard/studies/{study_id}")
            page.get_by_text(f"front (id={study_id})", exact=True).first.wait_for()
            page.get_by_role("heading", name="Pareto Front", exact=True).wait_for()
            page.locator(".js-plotly-plot").first.wait_for()
            page.get_by_text("val/pacgan_score").first.wait_for()
            assert page.get_by_text("Objective 0").count() == 0
            page.screenshot(path=ARTIFACTS_DIR / "dashboard-pareto.png")
    finally:
        ui.stop()
        dashboard.stop()
