"""SAE training throughput and quality, ours against a peer implementation on the same data.

Ours: ``layerwise.sae.train_saes`` with params.yaml's ``sae`` section (one SAE, as the stage
trains each of its six; the stage's six share one pass over the data, so its per-SAE cost is at
most this), in ``precision: auto`` (bfloat16 autocast on CPUs with native bf16 and CUDA, else
float32) and in float32. Peer: ``dictionary-learning`` 0.1.0 (saprmarks/dictionary_learning)
from PyPI, its ``StandardTrainer`` (ReLU + L1, unit-norm decoder via ``ConstrainedAdam``) and
``TopKTrainer``, driven by a loop written here that feeds it the very same batches (same seeded
index sequence, same rows read from the same memmap each step).

Why these choices keep it fair:

* Same data, same scale: the peer is fed ``x * s`` with our scale factor ``s`` (mean L2 norm
  sqrt(D): the convention of both libraries' own normalisation options), so one L1 coefficient
  means the same thing to both losses (per-token sums of squared error and of |z|).
* Same schedule: lr, batch size, tokens, warmup and final linear decay from params; no
  sparsity warm-up on either side.
* Matched sparsity: L0 decides FVU, so the peer's L1 penalty is tuned (log-log secant on L0,
  a few full trainings) until its L0 is within 10% of ours; TopK runs use the same ``k``.
* Same quality measure: FVU = 1 - sum||x - x_hat||^2 / sum||x - mean||^2 in float64 over the
  held-out analysis store, raw space, computed by one function here for both (ours is also
  checked against ``layerwise.sae.evaluate_sae``).

``dictionary_learning/__init__.py`` imports its activation buffer, which needs ``nnsight``
(not installed: it drags a model-serving stack). The package root is therefore registered
without running ``__init__``; the modules that import cleanly that way are listed in the output.
Install the peer with: ``pip install --no-deps dictionary-learning==0.1.0 einops``.

Data: the workspace's activation store of the task (``data/activations/<m>/<task>/s<seed>``,
read-only memmaps; store ``ft_L<middle layer>`` by default), else synthetic sparse data of the
same shape (stated in the output).

Target: ours >= 1.0x the peer's tokens/s at equal or lower FVU (matched L0).

Usage::

    python bench/sae.py                        # defaults: L1 and TopK, 600k tokens per SAE
    python bench/sae.py --quick                # ~20k tokens per SAE, small eval set
    python bench/sae.py --kinds l1 --store pt_L2 --json out.json
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import statistics
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # bench/ is not a package: its folder is on sys.path
    GB,
    REPO,
    Figure,
    check,
    figures_payload,
    fmt_spread,
    load_repo_params,
    machine_info,
    print_table,
    self_maxrss_bytes,
    write_json,
)

PEER_DIST = "dictionary-learning"
PEER_VERSION = "0.1.0"
PEER_MODULES = (
    "dictionary_learning.config",
    "dictionary_learning.dictionary",
    "dictionary_learning.trainers.trainer",
    "dictionary_learning.trainers.standard",
    "dictionary_learning.trainers.top_k",
    "dictionary_learning.trainers",
    "dictionary_learning.buffer",
    "dictionary_learning.evaluation",
    "dictionary_learning.training",
    "dictionary_learning.utils",
    "dictionary_learning.interp",
)
L0_TOLERANCE = 0.10
FVU_TOLERANCE = 0.005
"""Absolute FVU slack for "equal": two runs with different seeds differ by about this much."""
QUICK = {"train_tokens": 20_480, "train_rows": 20_000, "eval_rows": 2_000}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def synthetic_store(n: int, d: int, seed: int) -> np.ndarray:
    """Sparse-code data shaped like a store (float16 ``[n, d]``): ~16 of 2d random unit atoms
    per row with exponential magnitudes, a constant offset with two large outlier dims (as BERT
    has), and noise. Structured enough that an SAE's L0/FVU trade-off is not degenerate."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((2 * d, d)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    offset = rng.standard_normal(d).astype(np.float32) * 0.2
    offset[:2] = [8.0, -6.0]
    out = np.empty((n, d), dtype=np.float16)
    for start in range(0, n, 8192):
        m = min(8192, n - start)
        codes = np.zeros((m, 2 * d), dtype=np.float32)
        active = rng.integers(0, 2 * d, size=(m, 16))
        np.put_along_axis(codes, active, rng.exponential(1.0, size=(m, 16)), axis=1)
        rows = codes @ atoms + offset + 0.05 * rng.standard_normal((m, d))
        out[start : start + m] = rows.astype(np.float16)
    return out


def load_data(
    params: Any, task: str, store: str | None, quick: bool
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(train rows, held-out analysis rows, store name, where they came from)."""
    from layerwise.activations import ActivationStore

    model_key = next(iter(params.models))
    layers = params.model(model_key).layers
    name = store or f"ft_L{layers[len(layers) // 2]}"
    root = REPO / "data" / "activations" / model_key / task / f"s{params.seeds[0]}"
    try:
        train = ActivationStore.open(root, "train").acts(name)
        evals = ActivationStore.open(root, "analysis").acts(name)
        origin = f"workspace store {root.relative_to(REPO)}/{{train,analysis}}/{name}.npy"
    except (FileNotFoundError, KeyError):
        from layerwise.models import load_config

        d = int(load_config(params.model(model_key).source).hidden_size)
        n_train = params.compare.token_budget
        n_eval = params.task(task).max_analysis * 25  # ~25 tokens per sentence-length text
        rows = synthetic_store(n_train + n_eval, d, seed=0)  # one dictionary for both splits
        train, evals = rows[:n_train], rows[n_train:]
        origin = f"synthetic sparse data [{n_train} + {n_eval}, {d}] (no workspace store)"
    if quick:
        train, evals = train[: QUICK["train_rows"]], evals[: QUICK["eval_rows"]]
    return train, evals, name, origin


# --------------------------------------------------------------------------------------------
# Shared evaluation
# --------------------------------------------------------------------------------------------


def heldout_metrics(encode_decode: Any, acts: np.ndarray, batch: int = 4096) -> dict[str, float]:
    """FVU, L0 and MSE on every row of ``acts``, the same arithmetic for every SAE.

    ``encode_decode(x_raw_BD) -> (x_hat_raw_BD, z_BF)``. Float64 sums over the whole set; the
    variance is about the set's own mean (two passes: exact, no cancellation).
    """
    import torch

    n, d = acts.shape
    mean = np.zeros(d, dtype=np.float64)
    for s in range(0, n, batch):
        mean += np.asarray(acts[s : s + batch], dtype=np.float64).sum(0)
    mean_t = torch.from_numpy(mean / n)
    sse = sst = l0 = 0.0
    with torch.no_grad():
        for s in range(0, n, batch):
            x = torch.from_numpy(np.asarray(acts[s : s + batch], dtype=np.float32))
            x_hat, z = encode_decode(x)
            x64 = x.double()
            sse += float((x_hat.double() - x64).pow(2).sum())
            sst += float((x64 - mean_t).pow(2).sum())
            l0 += float((z > 0).sum())
    return {"fvu": sse / sst, "l0": l0 / n, "mse": sse / (n * d)}


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One SAE training: who, how, how fast, how good."""

    impl: str
    kind: str
    precision: str
    knob: float
    tokens: int
    wall_s: float
    metrics: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)
    repeat_walls: list[float] = field(default_factory=list)
    """Wall times of identical reruns (timing only: the metrics are deterministic)."""

    @property
    def walls(self) -> list[float]:
        return [self.wall_s, *self.repeat_walls]

    @property
    def tokens_per_s(self) -> float:
        """Of the median wall time over the run and its repeats."""
        return self.tokens / statistics.median(self.walls)

    def spread_note(self) -> str:
        rates = [self.tokens / w for w in self.walls]
        return f"median (min-max) of {len(rates)}: {fmt_spread(rates, 0)} tokens/s"

    def label(self) -> str:
        knob = f"l1 {self.knob:.4g}" if self.kind == "l1" else f"k {int(self.knob)}"
        return f"{self.impl} {self.kind} {self.precision} ({knob})"


@dataclass
class Setup:
    """What every run shares: data, scale, schedule."""

    train: np.ndarray
    evals: np.ndarray
    scale: float
    d_in: int
    d_sae: int
    lr: float
    batch_size: int
    steps: int
    warmup: int
    decay: int
    seed: int
    device: Any

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size


def train_ours(setup: Setup, kind: str, knob: float, autocast_dtype: Any, name: str) -> Run:
    """``train_saes`` on one SAE config, timed end to end (its data pass for ``b_dec`` included,
    as in the stage)."""
    from layerwise.sae import SAEConfig, evaluate_sae, train_saes

    cfg = SAEConfig(
        d_in=setup.d_in,
        d_sae=setup.d_sae,
        sparsity=kind,
        l1_coefficient=knob if kind == "l1" else 0.0,
        k=int(knob) if kind == "topk" else 32,
        scale_factor=setup.scale,
    )
    start = time.perf_counter()
    (sae,), _ = train_saes(
        [cfg],
        [setup.train],
        lr=setup.lr,
        batch_size=setup.batch_size,
        max_tokens=setup.tokens,
        warmup_steps=setup.warmup,
        lr_decay_ratio=setup.decay / setup.steps,
        seed=setup.seed,
        device=setup.device,
        autocast_dtype=autocast_dtype,
    )
    wall = time.perf_counter() - start
    sae = sae.cpu()

    def encode_decode(x: Any) -> tuple[Any, Any]:
        z = sae.encode(x)
        return sae.decode(z), z

    metrics = heldout_metrics(encode_decode, setup.evals)
    reference = evaluate_sae(sae, setup.evals)
    return Run(
        "ours",
        kind,
        name,
        knob,
        setup.tokens,
        wall,
        metrics,
        {"evaluate_sae_fvu": reference["fvu"], "dead_frac": reference["dead_frac"]},
    )


def load_peer() -> tuple[dict[str, str], Any, Any]:
    """Import status of the peer's modules (in a subprocess: a failed import leaves debris),
    then its trainers with the package root registered without running ``__init__``."""
    spec = importlib.util.find_spec("dictionary_learning")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"{PEER_DIST} is not installed: "
            f"pip install --no-deps {PEER_DIST}=={PEER_VERSION} einops"
        )
    probe = f"""
import importlib, json, sys, types
out = {{}}
try:
    importlib.import_module("dictionary_learning")
    out["dictionary_learning"] = "ok"
except Exception as e:
    out["dictionary_learning"] = f"{{type(e).__name__}}: {{e}}"
for k in [k for k in sys.modules if k.startswith("dictionary_learning")]:
    del sys.modules[k]
root = types.ModuleType("dictionary_learning")
root.__path__ = {list(spec.submodule_search_locations)!r}
sys.modules["dictionary_learning"] = root
for name in {list(PEER_MODULES)!r}:
    try:
        importlib.import_module(name)
        out[name] = "ok (root __init__ skipped)"
    except Exception as e:
        out[name] = f"{{type(e).__name__}}: {{e}}"
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    status = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
    if "dictionary_learning" not in sys.modules:
        root = types.ModuleType("dictionary_learning")
        root.__path__ = list(spec.submodule_search_locations)
        sys.modules["dictionary_learning"] = root
    standard = importlib.import_module("dictionary_learning.trainers.standard")
    top_k = importlib.import_module("dictionary_learning.trainers.top_k")
    return status, standard, top_k


def train_peer(setup: Setup, kind: str, knob: float, standard: Any, top_k: Any) -> Run:
    """The peer's trainer fed our batches (same indices, same rows, scaled by our ``s``)."""
    import torch

    from layerwise.sae import _batch_indices, _read_rows

    decay_start = setup.steps - setup.decay if setup.decay else None
    common = dict(
        steps=setup.steps,
        activation_dim=setup.d_in,
        dict_size=setup.d_sae,
        layer=0,
        lm_name="layerwise-bench",
        lr=setup.lr,
        warmup_steps=setup.warmup,
        decay_start=decay_start,
        seed=setup.seed,
        device=str(setup.device),
        wandb_name=None,
    )
    if kind == "l1":
        trainer = standard.StandardTrainer(
            **common, l1_penalty=knob, sparsity_warmup_steps=None, resample_steps=None
        )
    else:
        trainer = top_k.TopKTrainer(**common, k=int(knob))
    rng = np.random.default_rng(setup.seed)
    n = setup.train.shape[0]
    start = time.perf_counter()
    for step, idx in enumerate(_batch_indices(n, setup.batch_size, setup.steps, rng)):
        trainer.update(step, _read_rows(setup.train, idx) * setup.scale)
    wall = time.perf_counter() - start
    ae = trainer.ae.cpu().eval()

    def encode_decode(x: Any) -> tuple[Any, Any]:
        x_hat, z = ae(x * setup.scale, output_features=True)
        return x_hat / setup.scale, z

    with torch.no_grad():
        metrics = heldout_metrics(encode_decode, setup.evals)
    return Run("peer", kind, "float32", knob, setup.tokens, wall, metrics)


def rerun(run: Run, setup: Setup, dtypes: dict[str, Any], standard: Any, top_k: Any) -> Run:
    """The same training as ``run`` once more (``dtypes``: our precision label -> autocast)."""
    if run.impl == "ours":
        return train_ours(setup, run.kind, run.knob, dtypes[run.precision], run.precision)
    return train_peer(setup, run.kind, run.knob, standard, top_k)


def tune_peer_l1(
    setup: Setup, target_l0: float, start: float, tries: int, standard: Any, top_k: Any
) -> tuple[Run, list[Run]]:
    """Peer L1 runs until L0 is within ``L0_TOLERANCE`` of ``target_l0`` (or ``tries`` used up);
    returns the closest run and all tries. L0 falls roughly as a power of the penalty, so the
    next penalty comes from a secant in log-log space (slope -1 until two points exist)."""
    runs: list[Run] = []
    penalty = start
    for _ in range(tries):
        run = train_peer(setup, "l1", penalty, standard, top_k)
        runs.append(run)
        print(
            f"  peer l1 {penalty:.4g}: L0 {run.metrics['l0']:.1f} (target {target_l0:.1f}), "
            f"FVU {run.metrics['fvu']:.4f}, {run.tokens_per_s:,.0f} tok/s",
            flush=True,
        )
        l0 = max(run.metrics["l0"], 1e-3)
        if abs(l0 / target_l0 - 1) <= L0_TOLERANCE:
            break
        slope = -1.0
        if len(runs) >= 2:
            a, b = runs[-2], runs[-1]
            dl = math.log(max(b.metrics["l0"], 1e-3)) - math.log(max(a.metrics["l0"], 1e-3))
            dp = math.log(b.knob) - math.log(a.knob)
            if dp != 0 and dl < 0:
                slope = dl / dp
        penalty = math.exp(math.log(penalty) + (math.log(target_l0) - math.log(l0)) / slope)
    best = min(runs, key=lambda r: abs(math.log(max(r.metrics["l0"], 1e-3) / target_l0)))
    return best, runs


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def warm_up(setup: Setup, auto: Any, standard: Any, top_k: Any) -> None:
    """A few untimed steps of each code path: the first training in a process pays one-off
    costs (thread pool start, allocator growth, autocast and kernel selection) that would
    otherwise be charged to whichever run happens to come first."""
    from dataclasses import replace

    tiny = replace(setup, steps=6, warmup=1, decay=0, evals=setup.evals[:256])
    for dtype in {auto, None}:
        train_ours(tiny, "l1", 1.0, dtype, "warm-up")
    train_peer(tiny, "l1", 1.0, standard, top_k)


def compare_figures(kind: str, ours: list[Run], peer: Run, judge: bool) -> list[Figure]:
    """Ratio figures ours/peer for each of our precisions, judged at matched L0 and FVU."""
    figures = []
    l0_ok = abs(peer.metrics["l0"] / ours[0].metrics["l0"] - 1) <= L0_TOLERANCE
    for run in ours:
        ratio = run.tokens_per_s / peer.tokens_per_s
        fvu_ok = run.metrics["fvu"] <= peer.metrics["fvu"] + FVU_TOLERANCE
        met = (check(ratio, ">=", 1.0) and fvu_ok and l0_ok) if judge else None
        notes = [] if judge else ["not judged: --quick sizes"]
        notes += [
            f"ratio of medians ({len(run.walls)} and {len(peer.walls)} runs)",
            f"FVU {run.metrics['fvu']:.4f} vs {peer.metrics['fvu']:.4f}",
            f"L0 {run.metrics['l0']:.1f} vs {peer.metrics['l0']:.1f}",
        ]
        if not l0_ok:
            notes.append("L0 not matched within 10%")
        if not fvu_ok:
            notes.append("ours has higher FVU")
        figures.append(
            Figure(
                f"sae {kind}: ours {run.precision} / peer tokens/s",
                ratio,
                "x",
                ">= 1.0 at <= FVU",
                met,
                "; ".join(notes),
            )
        )
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", default="sentiment")
    ap.add_argument("--store", help="store name, e.g. ft_L4 (default: FT, middle SAE layer)")
    ap.add_argument("--kinds", default="l1,topk", help="comma list of l1, topk")
    ap.add_argument("--peer-tries", type=int, help="peer L1 trainings to match L0 (default 4)")
    ap.add_argument("--quick", action="store_true", help="~20k tokens per SAE, small sets")
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each compared config (>= 1)"
    )
    ap.add_argument("--json", help="write the result dict here")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not set(kinds) <= {"l1", "topk"}:
        ap.error(f"--kinds: {kinds} (allowed: l1, topk)")

    import torch

    from layerwise.models import autocast_dtype, pick_device
    from layerwise.sae import estimate_scale_factor
    from layerwise.sae_runner import sae_width

    params = load_repo_params()
    sp = params.sae
    seed = params.seeds[0]
    train, evals, name, origin = load_data(params, args.task, args.store, args.quick)
    device = pick_device()
    total = (
        QUICK["train_tokens"]
        if args.quick
        else sp.train_tokens or math.ceil((sp.epochs or 1.0) * train.shape[0])
    )
    steps = max(1, math.ceil(total / sp.batch_size))
    warmup = min(sp.warmup_steps, steps // 5)
    decay = round(sp.lr_decay_ratio * steps)
    if decay and steps - decay <= warmup:
        decay = 0
    setup = Setup(
        train=train,
        evals=evals,
        scale=estimate_scale_factor(train, seed=seed),
        d_in=train.shape[1],
        d_sae=sae_width(sp, train.shape[1]),
        lr=sp.learning_rate,
        batch_size=sp.batch_size,
        steps=steps,
        warmup=warmup,
        decay=decay,
        seed=seed,
        device=device,
    )
    auto = autocast_dtype(sp.precision, device)
    auto_name = f"auto={'bf16' if auto is not None else 'fp32'}"
    info = machine_info()
    print(
        f"sae benchmark: {origin}; {train.shape[0]} train rows, {evals.shape[0]} eval rows, "
        f"D={setup.d_in} -> F={setup.d_sae}; {setup.steps} steps x {setup.batch_size} = "
        f"{setup.tokens} tokens per SAE, lr {setup.lr}, warmup {setup.warmup}, decay "
        f"{setup.decay} steps; {info['cores']} cores, load {info['load_avg_1m']}",
        flush=True,
    )
    status, standard, top_k = load_peer()
    print("peer modules:", json.dumps(status, indent=1), flush=True)
    warm_up(setup, auto, standard, top_k)

    runs: list[Run] = []
    figures: list[Figure] = []
    for kind in kinds:
        knob = sp.l1_coefficient if kind == "l1" else float(sp.k)
        ours = []
        for dtype, label in ((auto, auto_name), (None, "fp32")):
            if dtype is None and auto is None and ours:
                continue  # auto already is float32 here
            run = train_ours(setup, kind, knob, dtype, label)
            print(
                f"  ours {kind} {label}: L0 {run.metrics['l0']:.1f}, FVU "
                f"{run.metrics['fvu']:.4f}, {run.tokens_per_s:,.0f} tok/s",
                flush=True,
            )
            ours.append(run)
        if kind == "l1":
            tries = args.peer_tries or (2 if args.quick else 4)
            peer, peer_runs = tune_peer_l1(
                setup, ours[0].metrics["l0"], knob, tries, standard, top_k
            )
        else:
            peer = train_peer(setup, kind, knob, standard, top_k)
            peer_runs = [peer]
            print(
                f"  peer topk k={int(knob)}: L0 {peer.metrics['l0']:.1f}, FVU "
                f"{peer.metrics['fvu']:.4f}, {peer.tokens_per_s:,.0f} tok/s",
                flush=True,
            )
        dtypes = {auto_name: auto, "fp32": None}
        for run in [*ours, peer]:  # the compared configs, timed again
            for _ in range(args.repeats - 1):
                run.repeat_walls.append(rerun(run, setup, dtypes, standard, top_k).wall_s)
            print(f"  {run.label()}: {run.spread_note()}", flush=True)
        runs += ours + peer_runs
        for run in [*ours, peer]:
            figures += [
                Figure(
                    f"sae {run.label()}: train",
                    run.tokens_per_s,
                    "tokens/s",
                    note=run.spread_note(),
                ),
                Figure(
                    f"sae {run.label()}: wall per SAE",
                    statistics.median(run.walls),
                    "s",
                    note=f"FVU {run.metrics['fvu']:.4f}, L0 {run.metrics['l0']:.1f}",
                ),
            ]
        figures += compare_figures(kind, ours, peer, judge=not args.quick)

    sanity = max(abs(r.metrics["fvu"] - r.extra["evaluate_sae_fvu"]) for r in runs if r.extra)
    peak = self_maxrss_bytes()
    figures.append(
        Figure("sae: peak RSS (process)", peak / GB, "GB", "<= 3", check(peak, "<=", 3 * GB))
    )
    print("\n| run | tokens/s | wall s | FVU | L0 |\n|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r.label()} | {r.tokens_per_s:,.0f} | {r.wall_s:.1f} | {r.metrics['fvu']:.4f} | "
            f"{r.metrics['l0']:.1f} |"
        )
    print(f"(our FVU here vs layerwise.sae.evaluate_sae: max |diff| {sanity:.2e})")
    print_table(f"sae ({name}; {origin})", figures)
    payload = figures_payload(
        figures,
        machine=info,
        quick=args.quick,
        data=origin,
        store=name,
        torch_threads=torch.get_num_threads(),
        peer=f"{PEER_DIST}=={PEER_VERSION}",
        peer_modules=status,
        setup={
            "d_in": setup.d_in,
            "d_sae": setup.d_sae,
            "steps": setup.steps,
            "batch_size": setup.batch_size,
            "tokens_per_sae": setup.tokens,
            "lr": setup.lr,
            "warmup": setup.warmup,
            "decay_steps": setup.decay,
            "scale": setup.scale,
        },
        runs=[
            {
                "label": r.label(),
                "impl": r.impl,
                "kind": r.kind,
                "precision": r.precision,
                "knob": r.knob,
                "tokens": r.tokens,
                "wall_s": r.wall_s,
                "walls_s": r.walls,
                "tokens_per_s": r.tokens_per_s,
                **r.metrics,
                **r.extra,
            }
            for r in runs
        ],
    )
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
