"""The docs stay a front door and a set of pages that link up: README.md is short, every relative
link in README.md and docs/*.md reaches a file, and the README shows the commands CI runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)


def relative_links(page: Path) -> list[str]:
    """Link targets that are not URLs or same-page anchors; code blocks and spans are skipped."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = LINK.findall(text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


def test_the_readme_fits_in_five_minutes():
    lines = len(README.read_text().splitlines())
    assert lines <= 160, f"README.md has {lines} lines; move details into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_reaches_a_file(page: Path):
    links = relative_links(page)
    missing = [t for t in links if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / t.split("#")[0]).resolve() for t in relative_links(README)}
    assert set(PAGES[1:]) <= linked, "a page in docs/ that the README does not link"


def test_the_readme_shows_the_commands_ci_runs():
    """The install line and the test commands of .ci/run appear verbatim in README.md, in the
    same order: a newcomer runs what CI runs."""
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    install = [line for line in ci if line.startswith("pip install ")]
    tiers = [shlex.join(shlex.split(line)[1:]) for line in ci if line.startswith("tier ")]
    assert install and tiers == ["pytest -m 'not slow'", "pytest -m slow"]
    readme = README.read_text()
    assert all(line in readme for line in install)
    shown = [
        line.split("#")[0].strip() for line in readme.splitlines() if line.startswith("pytest -m")
    ]
    assert [shlex.join(shlex.split(line)) for line in shown] == tiers


# Names that runs do not record as such: Lightning's suffixes, a name template, the checkpoint's
# hparams key, the `block` values (the README's parameters table has them) and MLflow's own tags.
UNRECORDED = {"STEP_SUFFIX", "EPOCH_SUFFIX", "SPLIT_SIZE", "CKPT_NETSPEC", "BASIC", "BOTTLENECK"}


def test_every_recorded_name_is_documented():
    """The docs' tables follow schema.py: a metric, tag, param, artifact or alias added there
    must appear (in backticks) in docs/, where users look it up."""
    from resnet_exp import schema as S

    docs = "\n".join(page.read_text() for page in PAGES[1:])
    names = {
        k: v
        for k, v in vars(S).items()
        if k.isupper()
        and isinstance(v, str)
        and k not in UNRECORDED
        and not k.startswith("MLFLOW_")
    }
    assert not {k: v for k, v in names.items() if f"`{v}" not in docs}


UI_PAGE = REPO / "docs" / "mlflow-ui.md"
SCREENSHOT_SCRIPT = REPO / "docs" / "screenshots.py"
# A 1400x900 screen in 256 colours is 20-80 KB; a full-colour or full-page capture is several
# times that, and every regeneration adds its size to the repository's history.
MAX_SCREENSHOT_BYTES = 300 * 1024


def test_the_ui_page_shows_every_screenshot_that_its_script_draws():
    """docs/screenshots.py and docs/mlflow-ui.md name the same figures: a shot renamed, added or
    dropped in one is in the other too (read from the script's `Shot("name", ...)` calls, so that
    no browser or store is needed)."""
    import ast

    drawn = {
        f"images/{node.args[0].value}.png"
        for node in ast.walk(ast.parse(SCREENSHOT_SCRIPT.read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", "") == "Shot"
        and isinstance(node.args[0], ast.Constant)
    }
    shown = {t for t in relative_links(UI_PAGE) if t.startswith("images/")}
    assert drawn and drawn == shown


def test_screenshots_stay_small():
    sizes = {p.name: p.stat().st_size for p in (REPO / "docs" / "images").glob("*.png")}
    assert not {name: size for name, size in sizes.items() if size > MAX_SCREENSHOT_BYTES}
