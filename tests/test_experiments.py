"""Tests for layerwise.experiments (``make compare``): the one-screen table built from ``dvc exp
show --json`` data, and its metric keys against what the stages really write. The command
itself runs on real queued experiments in ``test_team_queue``."""

from __future__ import annotations

import json
from typing import Any

from conftest import REPO_ROOT

from layerwise.experiments import COLUMNS, TALLY_KEYS, from_exp_show, table
from layerwise.schema import FINETUNE_KEYS, SAE_METRIC_KEYS

PARAMS = {"seeds": [0, 1], "tasks": ["kw"], "models": {"tiny": {}}, "sae": {"expansion": 4}}
PAPER = {
    "claims/holds": 1.0,
    "claims/partly": 1.0,
    "claims/does_not_hold": 1.0,
    "claims/tiny/kw/C1": 1.0,
    "claims/tiny/kw/C2": 0.5,
    "claims/tiny/kw/C3": 0.0,
    "claims/tiny/kw/late_below_band": -0.9,
    "claims/tiny/kw/cosine_late": 0.41,
}


def rev(sha: str, name: str | None, params: dict[str, Any], metrics: dict[str, Any]) -> dict:
    """One revision as ``dvc exp show --json`` prints it."""
    return {
        "rev": sha,
        "name": name,
        "data": {
            "params": {"params.yaml": {"data": params}},
            "metrics": {path: {"data": values} for path, values in metrics.items()},
        },
    }


def run_metrics(ft_accuracy: tuple[float, float], fvu: float) -> dict[str, Any]:
    """Metrics files of one (model, task) with two seeds."""
    out: dict[str, Any] = {"metrics/paper.json": PAPER}
    for seed, acc in enumerate(ft_accuracy):
        out[f"metrics/finetune/tiny/kw/s{seed}.json"] = {"ft/accuracy": acc}
        out[f"metrics/sae/tiny/kw/s{seed}.json"] = {"pt_L1/fvu": fvu, "ft_L1/fvu": fvu + 0.1}
    return out


def shown() -> list[dict]:
    """The workspace (expansion edited), HEAD, and one experiment on HEAD."""
    edited = {**PARAMS, "sae": {"expansion": 16}}
    head = rev("a" * 40, "main", PARAMS, run_metrics((0.8, 0.6), 0.2))
    head["experiments"] = [
        {"revs": [rev("b" * 40, "wide-sae", {**PARAMS, "sae": {"expansion": 8}}, {})]}
    ]
    return [rev("workspace", None, edited, run_metrics((0.9, 0.9), 0.3)), head]


def test_rows_name_each_experiment_and_what_it_changed() -> None:
    """Workspace (against HEAD), baseline, then its experiment (against the baseline)."""
    rows = from_exp_show(shown())
    assert [(r.name, r.changed) for r in rows] == [
        ("workspace", ["sae.expansion=16"]),
        ("main", []),
        ("wide-sae", ["sae.expansion=8"]),
    ]


def test_table_shows_verdicts_means_and_gaps() -> None:
    """Verdict words, means over seeds (and over a run's SAEs), ``-`` where a number is
    missing, and the claim tally on the experiment's line."""
    lines = table(from_exp_show(shown())).splitlines()
    header = lines[0].split()
    assert header == ["model/task", *(c.header for c in COLUMNS)]
    main = lines.index("main  [no param changed]  claims: 1 hold, 1 partly, 1 do not")
    cells = dict(zip(header, lines[main + 1].split(), strict=True))
    assert cells["model/task"] == "tiny/kw"
    assert (cells["C1"], cells["C2"], cells["C3"]) == ("yes", "part", "no")
    assert cells["late_vs_seeds"] == "-0.900"
    assert cells["cos_late"] == "0.410"
    assert cells["cos_early"] == "-"
    assert cells["ft_acc"] == "0.700"
    assert cells["sae_fvu"] == "0.250"
    exp = lines.index("wide-sae  [sae.expansion=8]  claims: -")
    assert set(lines[exp + 1].split()[1:]) == {"-"}


def test_headline_keys_are_what_the_stages_write() -> None:
    """Every column reads a key its writer produces: the finetune and SAE keys of the shared
    schema, and the claim keys of the repo's own ``metrics/paper.json`` for each (model,
    task)."""
    paper = json.loads((REPO_ROOT / "metrics" / "paper.json").read_text())
    pairs = {
        tuple(k.split("/")[1:3]) for k in paper if k.startswith("claims/") and k.count("/") == 3
    }
    assert pairs
    for column in COLUMNS:
        if column.kind == "finetune":
            assert column.key in FINETUNE_KEYS
        elif column.kind == "sae":
            assert column.key in SAE_METRIC_KEYS
        else:
            assert all(f"claims/{m}/{t}/{column.key}" in paper for m, t in pairs), column
    assert all(key in paper for key in TALLY_KEYS)
