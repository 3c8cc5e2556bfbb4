"""Redraw the screenshots of docs/mlflow-ui.md: a tiny demo study, the MLflow UI, headless Chromium.

It trains a small demo sweep (3 configurations x 2 seeds, 4 epochs at 64 px, about 1 minute on
2 idle CPU cores; its analysis is logged on the parent) into a SQLite store in a work folder, starts
`mlflow ui` on a free loopback port, and drives Debian's `chromium` through Playwright to each
page the doc shows, as a user sees it in a 1400x900 window: the experiment's runs (parent
expanded) and chart views (grouped by `depth_config`), the study's saved view, a child run, the
sweep's parent, a logged model, the analysis report and a child's diagnostics (about 20 s a
page, 5-6 minutes in all).
Each PNG is reduced to 256 colours: text stays readable and a page takes 20-80 KB. It prints,
per page, the chart sections in the order the UI shows them.

Playwright is not a project dependency; no browser is downloaded (Chromium comes from the system):

    pip install playwright            # and: apt-get install chromium
    python docs/screenshots.py        # writes docs/images/*.png
    python docs/screenshots.py --work-dir /tmp/shots   # keeps the store; a rerun reuses it
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click
from mlflow import MlflowClient
from PIL import Image

from analysis import views
from resnet_exp import schema as S

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "resnet-exp-demo"
# this interpreter's project and MLflow, whether or not its environment is activated
RESNET_EXP = [sys.executable, "-m", "resnet_exp"]
# 1400x900 fits every page's first screen and keeps a 256-colour PNG near 100 KB
VIEWPORT = {"width": 1400, "height": 900}
# A small study that learns: ResNet10 from random init at 64 px on the whole demo (clearly above
# chance within 3 epochs, tests/test_training.py), fp32 (no bf16 measurement), 4 epochs so that
# each curve has a shape; 10-20 s a training on 2 cores.
SWEEP = [
    *("--data", "demo", "--weights", "none", "--image-size", "64", "--batch-size", "32"),
    *("--limit-batches", "0", "--max-epochs", "4", "--precision", "32-true"),
    *("--blocks", "1,1,1,1", "--freeze-blocks", "0,2,4", "--seeds", "2"),
]
# The UI keeps its per-user state in localStorage: the assistant panel closed (it opens itself on
# a first visit and covers a third of the page).
BROWSER_STATE = {
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
}
RUNS_STATE_KEY = 'MLflowLocalStorage-1.1-ExperimentPage-["{experiment}"]-ReactComponentState'
# The runs table's columns that docs/mlflow-ui.md ("Columns") tells a user to add
COLUMNS = [
    "attributes.`Models`",
    *(f"params.`{name}`" for name in ("freeze_blocks", "blocks", "seed")),
    *(f"metrics.`{name}`" for name in ("test_acc", "val_acc", "best_epoch", S.LEADER_ACC)),
]
GROUP_BY_DEPTH = {
    "aggregateFunction": "average",
    "groupByKeys": [{"mode": "tag", "groupByData": S.TAG_DEPTH}],
}
# Chart-section headings, e.g. "setup (2)": what a user scrolls past, in order
SECTION = re.compile(r"^([^\n()]+?)\s*\((\d+)\)$", re.M)
# Scrolls the first text node equal to (else containing) a text to the top of its scroll box,
# and every wide table by some pixels to the right.
SCROLL = """([text, right]) => {
  if (text) {
    const nodes = [], walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    while (walk.nextNode()) if (walk.currentNode.textContent.includes(text)) nodes.push(walk.currentNode);
    const node = nodes.find(n => n.textContent.trim() === text) || nodes[0];
    if (node) node.parentElement.scrollIntoView({block: "start"});
    if (!node) return false;
  }
  if (right) for (const e of document.querySelectorAll("*"))
    if (e.scrollWidth > e.clientWidth + 20 && /auto|scroll/.test(getComputedStyle(e).overflowX))
      e.scrollLeft = right;
  return true;
}"""


@dataclass
class Shot:
    """One screenshot: a page of experiment `experiment` (a path after #/experiments/<id>)."""

    name: str
    path: str
    runs_state: dict = field(default_factory=dict)  # the runs view's stored state
    search: str = ""  # text to type into the chart search box first
    scroll_to: str = ""  # text (in the page or a frame) to scroll to the top of the view first
    scroll_right: int = 0  # pixels to scroll wide tables to the right first


def study(work: Path, env: dict[str, str]) -> None:
    """Train the demo sweep; its analysis runs when it ends and is logged on its parent."""
    common = ["--data-dir", str(work / "data"), "--output-dir", str(work / "results")]
    subprocess.run([*RESNET_EXP, "sweep", *SWEEP, *common], cwd=work, env=env, check=True)


def runs_of_kind(client: MlflowClient, kind: str) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    found = client.search_runs(
        [experiment.experiment_id],
        f"tags.{S.TAG_KIND} = '{kind}'",
        order_by=["attributes.run_name"],
    )
    return list(found)


def shots(client: MlflowClient) -> tuple[str, list[Shot]]:
    """The experiment id and the pages to capture, from what the study logged."""
    [parent] = runs_of_kind(client, S.KIND_SWEEP)
    parent_id = parent.info.run_id
    child = runs_of_kind(client, S.KIND_TRAIN)[0]  # first by name: freeze_blocks 0, seed 0
    experiment = parent.info.experiment_id
    curves = views.view_key(parent.data.tags[S.TAG_SWEEP_ID])  # the study's saved view
    models = client.search_logged_models(
        [experiment], filter_string=f"source_run_id = '{child.info.run_id}'"
    )
    runs_view = {"runsExpanded": {parent_id: True}, "selectedColumns": COLUMNS}
    charts = {**runs_view, "groupBy": GROUP_BY_DEPTH}
    run, art = f"/runs/{child.info.run_id}", f"/runs/{parent_id}/artifacts/{S.ANALYSIS_FOLDER}"
    diagnostics = f"{run}/artifacts/{S.DIAGNOSTICS_FOLDER}"
    pages = [
        Shot("runs", "/runs", runs_view),
        Shot("chart-view", "/runs?compareRunsMode=CHART", charts),
        Shot("curves-view", in_experiment(views.view_link(experiment, curves), experiment)),
        Shot("child-overview", run),
        Shot("child-model-metrics", f"{run}/model-metrics"),
        Shot("child-timing", f"{run}/artifacts/{S.PHASE_TIMES_FILE}"),
        Shot("parent-overview", f"/runs/{parent_id}"),
        Shot("parent-ranking", f"{art}/{S.RANKING_TABLE}"),
        Shot("models", "/models"),
        Shot("models-metric-columns", "/models", scroll_right=800),
        *(Shot("logged-model", f"/models/{m.model_id}") for m in models[:1]),
        Shot("report-html", f"{art}/{S.REPORT_HTML}"),
        Shot("report-html-ranking", f"{art}/{S.REPORT_HTML}", scroll_to="Ranking"),
        Shot("diagnostics-per-class", f"{diagnostics}/{S.PER_CLASS_TABLE}"),
        Shot("diagnostics-predictions", f"{diagnostics}/{S.PREDICTIONS_TABLE}"),
    ]
    return experiment, pages


def in_experiment(link: str, experiment: str) -> str:
    """A UI link ('#/experiments/<id>/...') as a Shot's path."""
    return link.removeprefix(f"#/experiments/{experiment}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_ui(uri: str, work: Path, env: dict[str, str]) -> Iterator[str]:
    """`mlflow ui` on a free loopback port, healthy; its whole process group stopped after."""
    port = free_port()
    log = (work / "mlflow-ui.log").open("w")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
    ]
    command += ["--port", str(port), "--workers", "1"]
    # Without this, `mlflow ui` starts 7 job consumers that keep both cores busy and outlive
    # SIGTERM by minutes; a viewer needs none of them.
    env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        command, cwd=work, env=env, stdout=log, stderr=log, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, server, work / "mlflow-ui.log")
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def wait_healthy(base: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120  # 10-40 s on a busy 2-core machine
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5):
                return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mlflow ui did not start; see {log}") from None
            time.sleep(1)


def capture(base: str, experiment: str, pages: list[Shot], out: Path, chromium: str) -> None:
    """Open each page in a fresh context (its own localStorage) and save a 256-colour PNG."""
    import json

    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for shot in pages:
            state = dict(BROWSER_STATE)
            if shot.runs_state:
                state[RUNS_STATE_KEY.format(experiment=experiment)] = json.dumps(shot.runs_state)
            context = browser.new_context(viewport=VIEWPORT)
            context.add_init_script(
                "".join(
                    f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});"
                    for k, v in state.items()
                )
            )
            page = context.new_page()
            # the Model training side of the UI: an experiment without `mlflow.experimentKind`
            # opens on its GenAI side, and this parameter is what its toggle sets
            path, side = shot.path, "workflowType=machine_learning"
            if side not in path:
                path += ("&" if "?" in path else "?") + side
            page.goto(f"{base}/#/experiments/{experiment}{path}")
            settle(page, PlaywrightTimeout)
            if shot.search:
                page.get_by_placeholder("Search metric charts").fill(shot.search)
                settle(page, PlaywrightTimeout)
            if shot.scroll_to or shot.scroll_right:
                scroll(page, shot)
            path = out / f"{shot.name}.png"
            page.screenshot(path=str(path))
            report(shot, page.inner_text("body"), shrink(path))
            context.close()
        browser.close()


def scroll(page, shot: Shot) -> None:
    """Scroll to the shot's text or right; charts below the fold are drawn only once scrolled
    near, so the page is wheeled down until the text exists."""
    for _ in range(20):
        # report.html is drawn in an iframe
        if any(
            [frame.evaluate(SCROLL, [shot.scroll_to, shot.scroll_right]) for frame in page.frames]
        ):
            break
        page.mouse.move(VIEWPORT["width"] // 2, VIEWPORT["height"] // 2)
        page.mouse.wheel(0, 600)
        page.wait_for_timeout(500)
    page.mouse.move(2, VIEWPORT["height"] // 2)  # off the charts: a hovered chart shows a toolbar
    page.wait_for_timeout(1_500)


def settle(page, timeout_error) -> None:
    """Wait for the page's requests to stop, then for charts to draw (no event says so)."""
    try:
        page.wait_for_load_state("networkidle", timeout=8_000)
    except timeout_error:
        pass  # the runs view polls for new runs; its first screen is drawn by now
    page.wait_for_timeout(2_500)


def shrink(path: Path) -> int:
    """Reduce a screenshot to 256 colours; its size in bytes."""
    Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)
    return path.stat().st_size


def report(shot: Shot, text: str, size: int) -> None:
    sections = ", ".join(f"{name} ({n})" for name, n in SECTION.findall(text))
    print(f"{shot.name}.png  {size // 1024} KB" + (f"  sections: {sections}" if sections else ""))


@click.command()
@click.option(
    "--out", default=str(REPO / "docs" / "images"), show_default=True, help="Where the PNGs go."
)
@click.option(
    "--work-dir", default="", help="Keep the store here; a store already there is reused."
)
@click.option(
    "--chromium", default="/usr/bin/chromium", show_default=True, help="The browser binary."
)
@click.option(
    "--only", default="", help="Comma-separated shot names to redraw (needs a --work-dir study)."
)
def main(out: str, work_dir: str, chromium: str, only: str) -> None:
    """Train a tiny demo study, open it in `mlflow ui` and save screenshots of its pages."""
    if not Path(chromium).exists():
        raise click.BadParameter(f"{chromium} does not exist; install chromium or pass its path")
    try:
        import playwright  # noqa: F401  (checked here, not after minutes of training)
    except ImportError:
        raise click.ClickException("playwright is not installed: pip install playwright") from None
    if only and not work_dir:
        raise click.BadParameter("--only needs --work-dir: the folder of an earlier run's study")
    work = Path(work_dir or tempfile.mkdtemp(prefix="resnet-exp-shots-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")
    }
    env.update(MLFLOW_TRACKING_URI=uri, RESNET_EXP_OFFLINE="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    client = MlflowClient(uri)
    if not runs_of_kind(client, S.KIND_SWEEP):
        if only:
            raise click.BadParameter(f"--only needs --work-dir holding a study; {work} has none")
        study(work, env)
    experiment, pages = shots(client)
    if only:
        names = {shot.name for shot in pages}
        unknown = set(only.split(",")) - names
        if unknown:
            raise click.BadParameter(
                f"--only {only}: unknown {sorted(unknown)}; shots: {sorted(names)}"
            )
        pages = [shot for shot in pages if shot.name in only.split(",")]
    with mlflow_ui(uri, work, env) as base:
        capture(base, experiment, pages, Path(out), chromium)
    print(f"store: {uri}", file=sys.stderr)


if __name__ == "__main__":
    main()
