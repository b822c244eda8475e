"""paper: every figure and table of the paper regenerated from the earlier stages' outputs, the
paper's three claims checked against the numbers, and paper/summary.md. No model computation."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from layerwise import claims, figures, io, tables, tracking
from layerwise.cli import StageArgs, prefixed, stage_run
from layerwise.paths import Paths

logger = logging.getLogger("paper")

"""The stage's DVC metrics file, relative to the repo root."""


def find_run_ids(root: str | Path, experiment: str, names: list[str]) -> dict[str, str]:
    """Run name -> id of its latest FINISHED MLflow run, ``n/a`` when there is none.

    Run ids are provenance for summary.md, not inputs: an unreadable store is logged and gives
    ``n/a`` everywhere rather than failing the stage (the stage's own run still needs it).
    """
    wanted = set(names)
    found: dict[str, str] = {}
    uri = tracking.tracking_uri(root)
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
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
    except Exception as exc:  # provenance only: never fail the paper for it
        logger.warning("could not read MLflow run ids from %s: %s", uri, exc)
    return {name: found.get(name, "n/a") for name in names}


def run(args: StageArgs) -> dict[str, float]:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, paths = args.params, Paths(args.root)
    # Every input must exist before anything is drawn or any run is opened.
    tables.check_inputs(p, paths)
    inputs = tables.load_inputs(p, paths)
    names = sorted(
        {
            tables.stage_run_name(stage, m, t, s)
            for stage in tables.STAGES
            for m in p.models
            for t in p.tasks
            for s in p.seeds
        }
    )
    run_ids = find_run_ids(args.root, p.mlflow.experiment, names)
    rho = p.paper.rho_threshold
    results = tables.evaluate_claims(inputs, rho)
    metrics = claims.claims_metrics(results)
    used = {
        **prefixed("paper", p.paper),
        "models": list(p.models),
        "tasks": p.tasks,
        "seeds": p.seeds,
        **{f"models.{m}.layers": d.layers for m, d in p.models.items()},
    }
    tags = {"models": ",".join(p.models), "tasks": ",".join(p.tasks), "seeds": p.seeds}
    with stage_run("paper", args, used, tags) as run, io.Staging() as staging:
        fig_dir = staging.dir(paths.paper() / "figures")
        tab_dir = staging.dir(paths.paper() / "tables")
        drawn, skipped = figures.draw_figures(inputs, fig_dir, p.paper.dpi)
        built = tables.build_tables(inputs, results, rho)
        tables.write_tables(built, tab_dir)
        summary = tables.summary_markdown(
            inputs,
            results,
            [(f.name, f.caption) for f in drawn],
            built,
            run_ids,
            tracking.git_commit(args.root),
            missing_figures=skipped,
            paper_run_id=run.run_id,
        )
        staging.file(paths.paper() / "summary.md").write_text(summary)
        io.write_json(staging.file(paths.paper_metrics()), metrics)
        run.log_metrics(metrics)
        run.log_artifacts(fig_dir, "figures")
        run.log_artifacts(tab_dir, "tables")
        with tempfile.TemporaryDirectory() as tmp:
            # The staged file has a temp name; log it under its real one.
            named = Path(tmp) / "summary.md"
            shutil.copyfile(staging.file(paths.paper() / "summary.md"), named)
            run.log_artifact(named)
    counts = claims.tally(results)
    logger.info(
        "paper: %d figure file(s), %d table(s); claims: %d hold, %d partly, %d do not hold",
        sum(len(f.files) for f in drawn),
        len(built),
        counts[claims.HOLDS],
        counts[claims.PARTLY],
        counts[claims.FAILS],
    )
    return metrics

