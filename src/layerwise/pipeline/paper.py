"""paper: every figure and table of the paper regenerated from the earlier stages' outputs, the
paper's three claims checked against the numbers and the controls (seed floor, shuffled-label
fine-tune and its crosscoder, layer reset, SAE seed baseline), and paper/summary.md. No model
computation.

The stage reads files only (through :mod:`layerwise.paper.inputs`), never the modules of the
stages that wrote them, so editing a stage's code reruns ``paper`` only through its outputs.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from layerwise import io, tracking
from layerwise.cli import StageArgs, prefixed, stage_run
from layerwise.config import Params
from layerwise.paper import claims, size_claims
from layerwise.paper.figures import FigureOutput, draw_figures
from layerwise.paper.inputs import load_inputs
from layerwise.paper.summary import summary_markdown
from layerwise.paper.tables import Table, build_tables, write_tables
from layerwise.paths import Paths
from layerwise.schema import STAGES, stage_run_name

logger = logging.getLogger("paper")


def find_run_ids(root: str | Path, experiment: str, names: list[str]) -> dict[str, str]:
    """Run name -> id of its latest FINISHED MLflow run, ``n/a`` when there is none.

    Run ids are provenance for summary.md, not inputs: an unreadable store is logged and gives
    ``n/a`` everywhere rather than failing the stage (the stage's own run still needs it).
    """
    uri = tracking.tracking_uri(root)
    try:
        found = _latest_finished_runs(uri, experiment, set(names))
    except Exception as exc:  # provenance only: never fail the paper for it
        logger.warning("could not read MLflow run ids from %s: %s", uri, exc)
        found = {}
    return {name: found.get(name, "n/a") for name in names}


def _latest_finished_runs(uri: str, experiment: str, wanted: set[str]) -> dict[str, str]:
    """Page through the experiment's FINISHED runs, newest first, until every wanted name is
    found: the first id seen for a name is its latest run."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    found: dict[str, str] = {}
    token = None
    while exp is not None and wanted - set(found):
        page = client.search_runs(
            [exp.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1000,
            page_token=token,
        )
        for run in page:
            name = run.info.run_name
            if name in wanted and name not in found:
                found[name] = run.info.run_id
        token = page.token
        if not token:
            break
    return found


def _stage_run_names(p: Params) -> list[str]:
    """MLflow run name of every earlier stage execution this paper summarises."""
    return sorted(
        {
            stage_run_name(stage, m, t, s)
            for stage in STAGES
            for m in p.all_models
            for t in p.tasks
            for s in p.seeds_of(m)
        }
    )


def _used_params(p: Params) -> dict[str, Any]:
    """The params the stage reads, as logged to its MLflow run."""
    return {
        **prefixed("paper", p.paper),
        **{
            f"crosscoder.{k}": getattr(p.crosscoder, k)
            for k in ("pt_only_below", "ft_only_above", "top_latents")
        },
        "models": list(p.models),
        "size_models": list(p.size_models),
        "tasks": p.tasks,
        "seeds": p.seeds,
        "size_seeds": p.size_seeds,
        **{f"models.{m}.layers": d.layers for m, d in p.models.items()},
        **{f"size_models.{m}.layers": d.layers for m, d in p.size_models.items()},
    }


def _log_summary(run: tracking.StageRun, staged: Path) -> None:
    """Log the staged summary under its real name (the staged file has a temp name)."""
    with tempfile.TemporaryDirectory() as tmp:
        named = Path(tmp) / "summary.md"
        shutil.copyfile(staged, named)
        run.log_artifact(named)


def _log_done(
    drawn: list[FigureOutput], built: list[Table], results: list[claims.ClaimResult]
) -> None:
    counts = claims.tally(results)
    logger.info(
        "paper: %d figure file(s), %d table(s); claims: %d hold, %d partly, %d do not hold",
        sum(len(f.files) for f in drawn),
        len(built),
        counts[claims.HOLDS],
        counts[claims.PARTLY],
        counts[claims.FAILS],
    )


def run(args: StageArgs) -> dict[str, float]:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, paths = args.params, Paths(args.root)
    # Every input must exist and be well-formed before anything is drawn or any run is opened.
    inputs = load_inputs(p, paths)
    run_ids = find_run_ids(args.root, p.mlflow.experiment, _stage_run_names(p))
    results = claims.evaluate_claims(inputs)
    size_results = size_claims.evaluate_size_claims(inputs)
    metrics = {
        **claims.claims_metrics(results),
        **size_claims.size_claims_metrics(size_results),
    }
    tags = {
        "models": ",".join(p.all_models),
        "tasks": ",".join(p.tasks),
        "seeds": p.seeds,
        "size_seeds": p.size_seeds,
    }
    with stage_run("paper", args, _used_params(p), tags) as run, io.Staging() as staging:
        fig_dir = staging.dir(paths.paper() / "figures")
        tab_dir = staging.dir(paths.paper() / "tables")
        drawn, skipped = draw_figures(inputs, fig_dir, p.paper.dpi)
        built = build_tables(inputs, results, size_results)
        write_tables(built, tab_dir)
        summary = summary_markdown(
            inputs,
            results,
            size_results,
            [(f.name, f.caption) for f in drawn],
            built,
            run_ids,
            tracking.git_commit(args.root),
            missing_figures=skipped,
            paper_run_id=run.run_id,
        )
        summary_file = staging.file(paths.paper() / "summary.md")
        summary_file.write_text(summary)
        io.write_json(staging.file(paths.paper_metrics()), metrics)
        run.log_metrics(metrics)
        run.log_artifacts(fig_dir, "figures")
        run.log_artifacts(tab_dir, "tables")
        _log_summary(run, summary_file)
    _log_done(drawn, built, results)
    return metrics
