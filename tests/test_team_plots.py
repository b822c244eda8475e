"""Offline plots: the repo's DVC config points ``dvc plots show`` / ``dvc plots diff`` at a page
with Vega, Vega-Lite and vega-embed inlined (``make plots-template`` builds it from npm registry
packages), so the pages load nothing from the network; headless Chromium, kept off the network,
renders them and the charts draw (Vega's canvas of marks is in the DOM)."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from team_support import GIT, commit_all, dvc, project_env, run

from layerwise.schema import FINETUNE_CURVE_COLUMNS

pytestmark = pytest.mark.slow

TEMPLATE_SETTING = "plots/offline.html"
TEMPLATE = REPO_ROOT / ".dvc" / TEMPLATE_SETTING
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Headless, no sandbox (root in CI), and no network at all: a page that needs a CDN stays blank.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000",
)  # fmt: skip
PLOTS_YAML = "plots:\n  - curve.csv:\n      x: step\n      y: train_loss\n"
MARKS = re.compile(r'<canvas[^>]*width="(\d+)"[^>]*height="(\d+)"[^>]*class="marks"')


def _write_curve(path: Path, losses: list[float]) -> None:
    """A finetune curve CSV (the columns the finetune stage writes)."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FINETUNE_CURVE_COLUMNS)
        writer.writeheader()
        for step, loss in enumerate(losses):
            writer.writerow({"step": step, "epoch": step / 4, "train_loss": loss})


def test_repo_config_names_the_offline_page() -> None:
    """``plots.html_template`` in the repo's DVC config is the page ``make plots-template``
    builds (ignored by git: it is made at install time, not committed)."""
    env = project_env(None)
    assert dvc("config", "plots.html_template", cwd=REPO_ROOT, env=env).strip() == (
        TEMPLATE_SETTING
    )
    ignored = subprocess.run(["git", "check-ignore", "-q", str(TEMPLATE)], cwd=REPO_ROOT)
    assert ignored.returncode == 0


@pytest.fixture
def browser() -> str:
    found = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if found is None:
        pytest.skip("no Chromium here (`make test` installs it where apt-get can)")
    if not TEMPLATE.is_file() or "{scripts}" in TEMPLATE.read_text():
        pytest.skip(
            f"{TEMPLATE_SETTING} not built with Vega inlined: `make plots-template` needs npm"
        )
    return found


@pytest.fixture
def plots_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A DVC project with the repo's DVC config and page, and a loss curve changed since HEAD."""
    env = project_env(None)
    project = tmp_path / "plots"
    project.mkdir()
    run([*GIT, "init", "-q"], project, env)
    dvc("init", "-q", cwd=project, env=env)
    shutil.copyfile(REPO_ROOT / ".dvc" / "config", project / ".dvc" / "config")
    (project / TEMPLATE.relative_to(REPO_ROOT)).parent.mkdir(parents=True)
    shutil.copyfile(TEMPLATE, project / TEMPLATE.relative_to(REPO_ROOT))
    (project / "dvc.yaml").write_text(PLOTS_YAML)
    _write_curve(project / "curve.csv", [0.9, 0.7, 0.5, 0.45, 0.3])
    commit_all(project, env, "curve")
    _write_curve(project / "curve.csv", [0.8, 0.6, 0.4, 0.35, 0.2])
    return project, env


def _rendered_dom(browser: str, page: Path, profile: Path) -> str:
    cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def test_plots_show_and_diff_draw_offline(
    browser: str, plots_project: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """Both commands write a page that references no external script and, rendered without
    network, holds Vega's drawn canvas."""
    project, env = plots_project
    pages = {
        "show": ["plots", "show", "-o", "show"],
        "diff": ["plots", "diff", "HEAD", "-o", "diff"],
    }
    for name, args in pages.items():
        dvc(*args, cwd=project, env=env)
        page = project / name / "index.html"
        html = page.read_text()
        assert "<script src" not in html
        assert "cdn." not in html
        assert "vegaEmbed(" in html
        dom = _rendered_dom(browser, page, tmp_path / f"profile-{name}")
        drawn = MARKS.search(dom)
        assert drawn is not None, f"dvc plots {name}: no chart drawn:\n{dom[-2000:]}"
        assert int(drawn.group(1)) > 0 and int(drawn.group(2)) > 0
