"""Headline metrics of every DVC experiment on one screen (``make compare``).

``dvc exp show`` prints every param and every metric: hundreds of columns, unreadable for
comparing runs. This reads the same data (``dvc exp show --json``) and keeps, per experiment,
the params it changed against its baseline commit and the claim tally, then one row per
(model, task): the claims' verdicts and effect sizes, the accuracies and the SAE quality.
Values are means over the seeds (and, for the SAE columns, over all SAEs of a run).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from layerwise.paths import Paths

logger = logging.getLogger(__name__)

PARAMS_FILE = "params.yaml"
VERDICTS = {1.0: "yes", 0.5: "part", 0.0: "no"}
"""Claim scores in ``metrics/paper.json`` (1 holds, 0.5 partly, 0 does not hold)."""
TALLY_KEYS = ("claims/holds", "claims/partly", "claims/does_not_hold")
MAX_CHANGED = 70
"""Characters of the changed-params list shown per experiment."""


@dataclass(frozen=True)
class Column:
    """One headline number: ``kind`` names the metrics file it comes from (``claims``: the
    (model, task) part of ``metrics/paper.json``; ``finetune``, ``sae``: the per-seed files),
    ``key`` the metric (for ``sae`` the suffix after ``<unit>/``)."""

    header: str
    kind: str
    key: str
    fmt: str = "{:.3f}"


COLUMNS = (
    Column("C1", "claims", "C1", "verdict"),
    Column("C2", "claims", "C2", "verdict"),
    Column("C3", "claims", "C3", "verdict"),
    Column("late_vs_seeds", "claims", "late_below_band", "{:+.3f}"),
    Column("late_vs_shuf", "claims", "late_below_shuffled", "{:+.3f}"),
    Column("reset_late", "claims", "reset_late_lost"),
    Column("cos_early", "claims", "cosine_early"),
    Column("cos_late", "claims", "cosine_late"),
    Column("ft_only_vs_shuf", "claims", "ft_only_late_minus_shuffled", "{:+.3f}"),
    Column("sel_excess_ft", "claims", "selectivity_excess_ft_late", "{:+.3f}"),
    Column("ft_acc", "finetune", "ft/accuracy"),
    Column("probe_acc", "finetune", "pt_probe/accuracy"),
    Column("sae_fvu", "sae", "fvu"),
    Column("sae_l0", "sae", "l0", "{:.1f}"),
)
"""C1-C3: the verdicts; late_vs_seeds / late_vs_shuf: how far the late-layer PT-FT cosine falls
below the FT-FT seed band / the shuffled-label curve; reset_late: share of the gain lost by
resetting the late blocks; cos_early / cos_late:
PT-FT cosine at the early and late SAE layer; ft_only_vs_shuf: late-layer crosscoder FT-only
fraction minus the shuffled-label control's; sel_excess_ft: split-half selectivity of the
late FT SAE's top features above its label-permutation null; ft_acc / probe_acc: fine-tuned
and PT linear-probe accuracy; sae_fvu / sae_l0: the SAEs' fraction of variance unexplained
and mean active features."""


@dataclass
class Experiment:
    """One row group: a workspace, a baseline commit or an experiment on top of one."""

    name: str
    params: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    changed: list[str]


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def _changed(params: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """``key=value`` for every param that differs from the baseline's."""
    mine, base = _flatten(params), _flatten(baseline)
    return [
        f"{k}={mine.get(k)}" for k in sorted(set(mine) | set(base)) if mine.get(k) != base.get(k)
    ]


def _entry(rev: dict[str, Any], name: str, baseline: dict[str, Any] | None) -> Experiment:
    data = rev.get("data") or {}
    params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data") or {}
    metrics = {path: m.get("data") or {} for path, m in (data.get("metrics") or {}).items()}
    changed = _changed(params, baseline) if baseline is not None else []
    return Experiment(name=name, params=params, metrics=metrics, changed=changed)


def _name(rev: dict[str, Any]) -> str:
    """The experiment's or branch's name, else the short commit (``workspace`` as it is)."""
    sha = rev["rev"]
    return rev.get("name") or (sha[:7] if len(sha) == 40 else sha)


def from_exp_show(shown: Sequence[dict[str, Any]]) -> list[Experiment]:
    """The rows of ``dvc exp show --json``: the workspace, each baseline commit, and the
    experiments derived from it, each with the params it changed (the workspace against the
    first baseline, ``HEAD``)."""
    out: list[Experiment] = []
    for base in shown:
        head = _entry(base, _name(base), None)
        out.append(head)
        for exp in base.get("experiments") or []:
            out.extend(_entry(rev, _name(rev), head.params) for rev in exp.get("revs") or [])
    if len(out) > 1 and shown[0]["rev"] == "workspace":
        out[0].changed = _changed(out[0].params, out[1].params)
    return out


def _runs(params: dict[str, Any]) -> Iterator[tuple[str, str, list[int]]]:
    """(model, task, seeds) the experiment's params ask for."""
    for model in params.get("models") or {}:
        for task in params.get("tasks") or []:
            yield model, task, list(params.get("seeds") or [])


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _value(exp: Experiment, column: Column, model: str, task: str, seeds: list[int]) -> Any:
    paths = Paths(".")
    if column.kind == "claims":
        claims = exp.metrics.get(paths.paper_metrics().as_posix(), {})
        return claims.get(f"claims/{model}/{task}/{column.key}")
    if column.kind == "finetune":
        files = [exp.metrics.get(paths.finetune_metrics(model, task, s).as_posix()) for s in seeds]
        return _mean([f[column.key] for f in files if f and column.key in f])
    files = [exp.metrics.get(paths.sae_metrics(model, task, s).as_posix()) or {} for s in seeds]
    suffix = f"/{column.key}"
    return _mean([v for f in files for k, v in f.items() if k.endswith(suffix)])


def _cell(column: Column, value: Any) -> str:
    if value is None:
        return "-"
    if column.fmt == "verdict":
        return VERDICTS.get(float(value), f"{value:g}")
    return column.fmt.format(value)


def _tally(exp: Experiment) -> str:
    paper = exp.metrics.get(Paths(".").paper_metrics().as_posix(), {})
    if not all(k in paper for k in TALLY_KEYS):
        return "claims: -"
    holds, partly, fails = (int(paper[k]) for k in TALLY_KEYS)
    return f"claims: {holds} hold, {partly} partly, {fails} do not"


def _line(label: str, cells: list[str], label_width: int) -> str:
    widths = [max(len(c.header), 5) for c in COLUMNS]
    return " ".join(
        [label.ljust(label_width), *(v.rjust(w) for v, w in zip(cells, widths, strict=True))]
    )


def table(rows: list[Experiment]) -> str:
    """The one-screen text: a header, then per experiment a title line (name, changed params,
    claim tally) and one line per (model, task)."""
    labels = [f"  {m}/{t}" for e in rows for m, t, _ in _runs(e.params)]
    label_width = max(len(x) for x in ["model/task", *labels])
    header = _line("model/task", [c.header for c in COLUMNS], label_width)
    lines = [header, "-" * len(header)]
    for exp in rows:
        changed = ", ".join(exp.changed)
        if len(changed) > MAX_CHANGED:
            changed = changed[: MAX_CHANGED - 3] + "..."
        lines.append(f"{exp.name}  [{changed or 'no param changed'}]  {_tally(exp)}")
        for model, task, seeds in _runs(exp.params):
            cells = [_cell(c, _value(exp, c, model, task, seeds)) for c in COLUMNS]
            lines.append(_line(f"  {model}/{task}", cells, label_width))
    return "\n".join(lines)


def exp_show(extra: list[str]) -> list[dict[str, Any]]:
    """``dvc exp show --json`` of the repo in the working directory."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[2:])} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-A", "--all-commits", action="store_true", help="every commit's runs")
    parser.add_argument("-n", "--num", type=int, help="runs of the last NUM commits")
    ns = parser.parse_args(argv)
    extra = (["--all-commits"] if ns.all_commits else []) + (
        ["--num", str(ns.num)] if ns.num else []
    )
    print(table(from_exp_show(exp_show(extra))))


if __name__ == "__main__":
    main()
