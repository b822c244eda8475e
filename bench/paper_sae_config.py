"""The paper's own SAE configuration on mpnet-base, as a DVC experiment, beside our default SAEs.

Nadipalli (2025) trains one SAE per (task, layer, PT|FT) at 768 -> 1024, ReLU, MSE + 1e-3 mean
|z|, Adam 2e-5, 2 epochs, batch 16, on mean-pooled sentence activations. This runs exactly that
on the default's `mpnet-base` (bert-base's shape) with `dvc exp run`, only its `sae_size` and
`features_size` stages (the activations are the workspace's, unchanged), puts the workspace
back to its commit (a `dvc exp run` leaves the experiment's outputs there), then prints a
Markdown table of the experiment's SAEs beside the default ones of the commit it ran on: FVU,
L0, dead fraction and the top features' split-half selectivity excess over its permutation null.

Usage: python bench/paper_sae_config.py [--name paper-sae-mpnet] [--no-run]
(`--no-run` reads an experiment that already ran.) Needs a clean git workspace.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
MODEL = "mpnet-base"
PAPER_SAE = {
    "sae.pooling": "mean",
    "sae.sparsity": "l1",
    "sae.expansion": "1.3333333",  # 768 -> 1024
    "sae.l1_coefficient": "1e-3",
    "sae.l0_target": "null",  # one fixed coefficient, as the paper
    "sae.learning_rate": "2e-5",
    "sae.warmup_steps": "0",
    "sae.lr_decay_ratio": "0",  # constant learning rate
    "sae.epochs": "2",
    "sae.train_tokens": "null",
    "sae.batch_size": "16",
}
"""The `dvc exp run -S` overrides that make the `sae` section the paper's (a section that
trains by epochs applies to every model, so mpnet-base's own token budget steps aside)."""


def run_experiment(name: str, tasks: list[str], seed: int) -> None:
    """`dvc exp run` of the paper's SAE config, targeting only this model's SAE stages."""
    sets = [arg for key, value in PAPER_SAE.items() for arg in ("-S", f"{key}={value}")]
    targets = [f"features_size@{MODEL}-{t}-{seed}" for t in tasks]
    cmd = ["dvc", "exp", "run", "--name", name, *sets, *targets]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def restore_workspace() -> None:
    """Back to the commit: the files the experiment rewrote, then DVC's cached outputs."""
    changed = git("diff", "--name-only", "HEAD").split()
    if changed:
        git("checkout", "HEAD", "--", *changed)
    subprocess.run(["dvc", "checkout"], cwd=ROOT, check=True)


def exp_ref(name: str) -> str:
    """The git ref DVC stored the experiment under (``refs/exps/.../<name>``)."""
    refs = git("for-each-ref", "--format=%(refname)", "refs/exps").split()
    found = [r for r in refs if r.rsplit("/", 1)[-1] == name]
    if not found:
        raise SystemExit(f"no DVC experiment named {name!r}: run without --no-run first")
    return found[-1]


def read_json(path: str, ref: str) -> dict[str, Any]:
    """A metrics file as committed at ``ref``."""
    return json.loads(git("show", f"{ref}:{path}"))


def unit_numbers(task: str, seed: int, ref: str, layer: int, which: str) -> list[str]:
    """FVU, L0, dead % and selectivity excess of one SAE, as committed at ``ref``."""
    sae = read_json(f"metrics/sae/{MODEL}/{task}/s{seed}.json", ref)
    feats = read_json(f"metrics/features/{MODEL}/{task}/s{seed}.json", ref)
    unit = f"{which}_L{layer}"
    return [
        f"{sae[f'{unit}/fvu']:.3f}",
        f"{sae[f'{unit}/l0']:.1f}",
        f"{100 * sae[f'{unit}/dead_frac']:.1f}",
        f"{feats[f'L{layer}/selectivity_excess_{which}']:.3f}",
    ]


def table(tasks: list[str], layers: list[int], seed: int, ref: str) -> str:
    head = (
        "| task | layer | PT/FT | ours: FVU | L0 | dead % | sel. excess | paper's: FVU | L0 | "
        "dead % | sel. excess |"
    )
    lines = [head, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in tasks:
        for layer in layers:
            for which in ("pt", "ft"):
                ours = unit_numbers(t, seed, f"{ref}^", layer, which)  # the baseline commit
                paper = unit_numbers(t, seed, ref, layer, which)
                row = [t, str(layer), which.upper(), *ours, *paper]
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", default="paper-sae-mpnet")
    ap.add_argument("--no-run", action="store_true")
    args = ap.parse_args(argv)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    tasks, seed = params["tasks"], params["size_seeds"][0]
    layers = params["size_models"][MODEL]["layers"]
    if not args.no_run:
        if git("status", "--porcelain", "--untracked-files=no").strip():
            raise SystemExit("commit or stash your changes first: the experiment runs in place")
        run_experiment(args.name, tasks, seed)
        restore_workspace()
    print(table(tasks, layers, seed, exp_ref(args.name)))


if __name__ == "__main__":
    main()
