"""Crosscoder training throughput and quality, ours against a peer on the same data.

Ours: ``layerwise.sae.crosscoder_train.CrosscoderTrainer`` (BatchTopK, one encoder over the paired
PT/FT rows, one decoder per model), in ``precision: auto`` (bfloat16 autocast on CPUs with native
bf16 and on CUDA, else float32) and in float32. Peer: ``dictionary-learning`` 0.1.0's
``BatchTopKTrainer`` on the concatenated rows ``[s_PT * x_PT; s_FT * x_FT]``: no crosscoder
library installs from PyPI, and a BatchTopK crosscoder over two models at one layer does the
same arithmetic as a BatchTopK SAE on those rows (one ``[B, 2D] x [2D, F]`` encoder matmul, one
``[B, F] x [F, 2D]`` decoder matmul, their backward); it differs in what it learns (free
per-model decoder norms, ranked by their sum, where the peer keeps each concatenated row at unit
norm), which is what model diffing reads.

Why it is fair:

* Same data, same scale: the peer is fed every batch our trainer reads (same seeded index
  sequence, same rows), each model's half multiplied by our per-model scale factor.
* Same schedule: the sae stage's ``TrainConfig`` (lr, batch size, tokens, warmup, final linear
  decay); same width and ``k``.
* Same inference threshold: both are set the same way after training, to the mean batch cutoff
  of the final weights over 16 batches
  (``layerwise.sae.crosscoder_train.estimate_threshold``; for the peer, the same arithmetic on
  its ``encode``), timed as part of each run. The peer's own moving average over training is
  switched off: it lags behind the drifting cutoff (a first run kept 29 latents per
  row at k = 64), which would put the two at different sparsity.
* Same quality measure: per-model FVU = 1 - sum||x - x_hat||^2 / sum||x - mean||^2 in float64 over
  the held-out analysis rows, raw space, by one function here for both (ours is also checked
  against ``layerwise.sae.crosscoder_analysis.evaluate_crosscoder``), with each side's
  inference-time (thresholded) latents.
* Same conditions: an untimed warm-up of each code path first; timed repeats interleaved.

Where the time goes: each run's wall time is split into its setup (ours: the exact ``b_dec``
mean pass over both stores; the peer: its constructor), the batch reads (timed alone, the same
for both) and the rest (the steps' compute).

Data: the workspace's activation stores ``pt_L<layer>`` and ``ft_L<layer>`` of the task
(``data/activations/<m>/<task>/s<seed>``, its FT half linked to the shared ``pt/``; read-only
memmaps; the middle SAE layer by default),
else synthetic paired data of the same shape (said in the output). Target: ours >= 1.0x the
peer's tokens/s at equal or lower FVU on both models. Two readings are printed: on the same
token budget (the ratio of tokens/s, with the FVU gap noted), and at equal quality (ours trained
on 1.25x, 1.5x, 2x or 3x the tokens, the first budget whose FVU is at or below the peer's on both
models, and the peer's wall time over ours: what a user waits for a crosscoder as good as the
peer's). The matched runs are timed after the interleaved repeats, one after another.

Usage::

    python bench/crosscoder.py                 # the sae section's token budget
    python bench/crosscoder.py --quick         # ~20k tokens, small eval set
    python bench/crosscoder.py --layer 6 --k 32 --json out.json
    python bench/crosscoder.py --tokens 200000 --repeats 1
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sae import PEER, peer_module
from timing import (
    REPO,
    Figure,
    bench_parser,
    judge,
    peak_rss_gb,
    report,
    run_records,
    spread,
    timed,
)

FVU_TOLERANCE = 0.005
"""Absolute FVU slack for "equal": two runs with different seeds differ by about this much."""
MATCH_FACTORS = (1.25, 1.5, 2.0, 3.0)
"""Token budgets (times the peer's) tried in turn for ours to reach the peer's FVU."""
QUICK = {"train_tokens": 20_480, "train_rows": 20_000, "eval_rows": 2_000}


# --------------------------------------------------------------------------------------------
# Data and the shared quality measure


def synthetic_pair(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired float16 ``[n, d]`` stores shaped like PT/FT activations: ~16 of 2d random unit atoms
    per token with exponential magnitudes, 60% of them shared (same atom and coefficient in both
    models), 20% PT-only, 20% FT-only; per-model offsets with two large outlier dims (as BERT
    has); noise."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((2 * d, d)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    n_shared, n_only = int(0.6 * len(atoms)), int(0.2 * len(atoms))
    masks = [np.zeros(len(atoms), dtype=np.float32) for _ in range(2)]
    masks[0][: n_shared + n_only] = 1  # PT: shared + PT-only
    masks[1][:n_shared] = masks[1][n_shared + n_only :] = 1  # FT: shared + FT-only
    offsets = rng.standard_normal((2, d)).astype(np.float32) * 0.2
    offsets[:, :2] = [[8.0, -6.0], [9.0, -5.0]]
    out = [np.empty((n, d), dtype=np.float16) for _ in range(2)]
    for start in range(0, n, 8192):
        m = min(8192, n - start)
        codes = np.zeros((m, len(atoms)), dtype=np.float32)
        active = rng.integers(0, len(atoms), size=(m, 16))
        np.put_along_axis(codes, active, rng.exponential(1.0, size=(m, 16)), axis=1)
        for side in range(2):
            rows = (codes * masks[side]) @ atoms + offsets[side]
            rows += 0.05 * rng.standard_normal((m, d))
            out[side][start : start + m] = rows.astype(np.float16)
    return out[0], out[1]


def load_data(params: Any, task: str, layer: int | None) -> tuple[tuple, tuple, str]:
    """((train PT, train FT), (eval PT, eval FT), where they came from)."""
    from layerwise.activations import ActivationStore
    from layerwise.models import load_config

    model_key = next(iter(params.models))
    layers = params.model(model_key).layers
    layer = layers[len(layers) // 2] if layer is None else layer
    root = REPO / "data" / "activations" / model_key / task / f"s{params.seeds[0]}"
    try:
        train, evals = (ActivationStore.open(root, split) for split in ("train", "analysis"))
        pair = [f"{side}_L{layer}" for side in ("pt", "ft")]
        return (
            tuple(train.acts(name) for name in pair),
            tuple(evals.acts(name) for name in pair),
            f"stores {'/'.join(pair)} of {root.relative_to(REPO)}",
        )
    except (FileNotFoundError, KeyError):
        d = int(load_config(params.model(model_key).source).hidden_size)
        n_train = params.compare.token_budget
        n_eval = params.task(task).max_analysis * 25  # ~25 tokens per sentence-length text
        pt, ft = synthetic_pair(n_train + n_eval, d, seed=0)  # one dictionary for both splits
        origin = f"synthetic paired [{n_train} + {n_eval}, {d}] (no store)"
        return (pt[:n_train], ft[:n_train]), (pt[n_train:], ft[n_train:]), origin


def heldout_metrics(encode_decode: Any, evals: tuple, batch: int = 4096) -> dict[str, float]:
    """Per-model FVU, the mean L0 and the fraction of latents that never fire, on every eval
    row, the same arithmetic for both implementations.

    ``encode_decode(x_pt, x_ft) -> (x_hat_pt, x_hat_ft, z)``, raw space. Float64 sums; the
    variance is about the set's own mean (two passes: exact).
    """
    import torch

    n = evals[0].shape[0]
    means = [np.asarray(e, dtype=np.float64).mean(0) for e in evals]
    sse, sst, l0, fired = [0.0, 0.0], [0.0, 0.0], 0.0, None
    with torch.no_grad():
        for s in range(0, n, batch):
            xs = [torch.from_numpy(np.asarray(e[s : s + batch], dtype=np.float32)) for e in evals]
            *x_hats, z = encode_decode(*xs)
            for i, (x, x_hat) in enumerate(zip(xs, x_hats, strict=True)):
                sse[i] += float((x_hat.double() - x.double()).pow(2).sum())
                sst[i] += float((x.double() - torch.from_numpy(means[i])).pow(2).sum())
            l0 += float((z > 0).sum())
            fired = (z > 0).any(0) if fired is None else fired | (z > 0).any(0)
    dead = 1.0 - float(fired.double().mean())
    return {"fvu_pt": sse[0] / sst[0], "fvu_ft": sse[1] / sst[1], "l0": l0 / n, "dead_frac": dead}


# --------------------------------------------------------------------------------------------
# Runs


@dataclass
class Setup:
    """What every run shares: data, the crosscoder's shape and scales, the schedule, the peer."""

    train: tuple
    evals: tuple
    cfg: Any
    """``CrosscoderConfig`` with both scale factors."""
    config: Any
    """The sae stage's ``TrainConfig``."""
    peer: Any

    @property
    def steps(self) -> int:
        return self.config.total_steps(self.train[0].shape[0])

    @property
    def tokens(self) -> int:
        return self.steps * self.config.batch_size

    def batches(self, n_batches: int | None = None, stream: int | None = None) -> Any:
        """The trainer's own batch order (the peer must see the very same batches); with
        ``stream=1``, ``estimate_threshold``'s batches."""
        from layerwise.sae.train import _batch_indices

        seed = self.config.seed if stream is None else [self.config.seed, stream]
        rng = np.random.default_rng(seed)
        n_batches = self.steps if n_batches is None else n_batches
        return _batch_indices(self.train[0].shape[0], self.config.batch_size, n_batches, rng)

    def scaled_batch(self, idx: np.ndarray) -> Any:
        """Rows ``idx`` of both stores, each scaled by its factor, concatenated."""
        import torch

        from layerwise.sae._arrays import read_rows

        pairs = zip(self.train, self.cfg.scale_factors, strict=True)
        return torch.cat([read_rows(a, idx) * s for a, s in pairs], 1)


@dataclass
class Run:
    """One configuration: who, how, its wall times (timed repeats), the setup part of each, and
    its metrics (deterministic: from the first run)."""

    impl: str
    precision: str
    dtype: Any
    walls: list[float]
    setups: list[float]
    metrics: dict[str, float]

    def label(self) -> str:
        return f"{self.impl} {self.precision}"


def train_ours(setup: Setup, dtype: Any, label: str) -> Run:
    """``CrosscoderTrainer`` timed end to end (its ``b_dec`` data pass included)."""
    from layerwise.sae.crosscoder_analysis import evaluate_crosscoder
    from layerwise.sae.crosscoder_train import CrosscoderTrainer

    config = replace(setup.config, autocast_dtype=dtype)
    init_s, trainer = timed(lambda: CrosscoderTrainer(setup.cfg, *setup.train, config))
    fit_s, (cc, _) = timed(trainer.fit)
    cc = cc.cpu()

    def encode_decode(x_pt: Any, x_ft: Any) -> tuple[Any, Any, Any]:
        z = cc.encode(x_pt, x_ft)
        return (*cc.decode(z), z)

    metrics = heldout_metrics(encode_decode, setup.evals)
    reference = evaluate_crosscoder(cc, *setup.evals).metrics
    metrics["fvu_diff_vs_evaluate"] = max(
        abs(metrics[f"fvu_{side}"] - reference[side]["fvu"]) for side in ("pt", "ft")
    )
    return Run("ours", label, dtype, [init_s + fit_s], [init_s], metrics)


def train_peer(setup: Setup) -> Run:
    """The peer's ``BatchTopKTrainer`` fed our batches, concatenated and scaled as ours, its
    inference threshold set as ours is."""
    import torch

    config, steps, cfg = setup.config, setup.steps, setup.cfg
    decay = config.decay(steps)
    init_s, trainer = timed(
        lambda: setup.peer.BatchTopKTrainer(
            steps=steps,
            activation_dim=2 * cfg.d_in,
            dict_size=cfg.d_latent,
            k=cfg.k,
            layer=0,
            lm_name="layerwise-bench",
            lr=config.lr,
            warmup_steps=config.warmup(steps),
            decay_start=steps - decay if decay else None,
            threshold_start_step=steps,  # no moving average: set after training, as ours
            seed=config.seed,
            device=str(config.device),
            wandb_name=None,
        )
    )
    scales = cfg.scale_factors

    def fit() -> None:
        for step, idx in enumerate(setup.batches()):
            trainer.update(step, setup.scaled_batch(idx))
        with torch.no_grad():
            cutoffs = []
            for idx in setup.batches(n_batches=16, stream=1):
                f = trainer.ae.encode(setup.scaled_batch(idx), use_threshold=False)
                cutoffs.append(f[f > 0].min())
            trainer.ae.threshold.fill_(float(torch.stack(cutoffs).mean()))

    fit_s, _ = timed(fit)
    ae = trainer.ae.cpu().eval()

    def encode_decode(x_pt: Any, x_ft: Any) -> tuple[Any, Any, Any]:
        x_hat, z = ae(torch.cat([x_pt * scales[0], x_ft * scales[1]], 1), output_features=True)
        x_hat_pt, x_hat_ft = x_hat.split(cfg.d_in, dim=1)
        return x_hat_pt / scales[0], x_hat_ft / scales[1], z

    return Run(
        "peer",
        "float32",
        None,
        [init_s + fit_s],
        [init_s],
        heldout_metrics(encode_decode, setup.evals),
    )


def retime(run: Run, setup: Setup) -> None:
    """The same training once more: append its wall and setup times."""
    again = train_peer(setup) if run.impl == "peer" else train_ours(setup, run.dtype, run.precision)
    run.walls += again.walls
    run.setups += again.setups


def read_seconds(setup: Setup) -> float:
    """Reading, scaling and concatenating every batch alone (what both loops do besides
    compute)."""

    def read_all() -> None:
        for idx in setup.batches():
            setup.scaled_batch(idx)

    return timed(read_all)[0]


def describe(run: Run) -> str:
    m = run.metrics
    return (
        f"{run.label()}: FVU PT {m['fvu_pt']:.4f}, FT {m['fvu_ft']:.4f}, L0 {m['l0']:.1f}, "
        f"{run.walls[0]:.1f} s"
    )


def matched_run(setup: Setup, peer: Run, dtype: Any, label: str) -> Run | None:
    """Ours trained on more tokens (the same schedule shape, stretched) until its held-out FVU
    is at or below the peer's on both models, without any tolerance: the time ours needs to
    reach the peer's quality. None when no budget in ``MATCH_FACTORS`` gets there."""
    for factor in MATCH_FACTORS:
        config = replace(setup.config, max_tokens=round(setup.tokens * factor), epochs=None)
        run = train_ours(replace(setup, config=config), dtype, f"{label}, {factor}x tokens")
        if all(run.metrics[f"fvu_{s}"] <= peer.metrics[f"fvu_{s}"] for s in ("pt", "ft")):
            run.metrics["token_factor"] = factor
            return run
    return None


def setup_for(setup: Setup, run: Run) -> Setup:
    """``setup`` with the token budget ``run`` trained on (a matched run's longer one)."""
    factor = run.metrics.get("token_factor", 1.0)
    return replace(setup, config=replace(setup.config, max_tokens=round(setup.tokens * factor)))


def matched_figure(setup: Setup, ours: Run, matched: Run | None, peer: Run, judged: bool) -> Figure:
    """The peer's tokens per second of ours' wall time to reach the peer's FVU, over the peer's
    own tokens/s: throughput at equal or lower FVU, when ours needs more tokens to get there."""
    name = f"crosscoder: ours {ours.precision} to the peer's FVU / peer tokens/s"
    if matched is None:
        note = f"ours did not reach the peer's FVU within {MATCH_FACTORS[-1]}x its tokens"
        return Figure(name, [], "x", ">= 1.0", False if judged else None, note)
    ratios = [p / o for o, p in zip(matched.walls, peer.walls, strict=True)]
    m, factor = matched.metrics, matched.metrics["token_factor"]
    note = (
        f"ours on {factor}x the tokens ({round(setup.tokens * factor)}): FVU PT {m['fvu_pt']:.4f} "
        f"FT {m['fvu_ft']:.4f} vs the peer's {peer.metrics['fvu_pt']:.4f} / "
        f"{peer.metrics['fvu_ft']:.4f}, L0 {m['l0']:.1f}; wall {spread(matched.walls)} s vs "
        f"{spread(peer.walls)} s"
    )
    return Figure(name, ratios, "x", ">= 1.0", judge(ratios, ">=", 1.0, judged=judged), note)


# --------------------------------------------------------------------------------------------
# Figures


def run_figure(run: Run, tokens: int, reads: float) -> Figure:
    m = run.metrics
    setup_s = float(np.median(run.setups))
    compute = float(np.median(run.walls)) - setup_s - reads
    where = (
        f"{spread(run.walls)} s: setup {setup_s:.2f} s"
        f"{' (b_dec mean pass)' if run.impl == 'ours' else ''}, batch reads ~{reads:.2f} s, "
        f"steps and threshold pass ~{compute:.2f} s; FVU PT {m['fvu_pt']:.4f}, "
        f"FT {m['fvu_ft']:.4f}, L0 {m['l0']:.1f}, dead {m['dead_frac']:.3f}"
    )
    if run.impl == "ours":
        where += f"; FVU off evaluate_crosscoder's by {m['fvu_diff_vs_evaluate']:.1e}"
    return Figure(
        f"crosscoder {run.label()}: train", [tokens / w for w in run.walls], "tokens/s", where=where
    )


def ratio_figure(ours: Run, peer: Run, judged: bool) -> Figure:
    """Ours / peer tokens/s per interleaved repeat, judged at equal or lower FVU on both
    models."""
    ratios = [p / o for o, p in zip(ours.walls, peer.walls, strict=True)]
    worse = [
        side
        for side in ("pt", "ft")
        if ours.metrics[f"fvu_{side}"] > peer.metrics[f"fvu_{side}"] + FVU_TOLERANCE
    ]
    notes = [
        f"FVU PT {ours.metrics['fvu_pt']:.4f} vs {peer.metrics['fvu_pt']:.4f}",
        f"FT {ours.metrics['fvu_ft']:.4f} vs {peer.metrics['fvu_ft']:.4f}",
        f"L0 {ours.metrics['l0']:.1f} vs {peer.metrics['l0']:.1f}",
        f"wall {spread(ours.walls)} s vs {spread(peer.walls)} s",
    ]
    if worse:
        notes.append(f"ours has higher FVU on {'/'.join(worse)}")
    met = judge(ratios, ">=", 1.0, judged=judged)
    return Figure(
        f"crosscoder: ours {ours.precision} / peer tokens/s",
        ratios,
        "x",
        ">= 1.0 at <= FVU",
        None if met is None else met and not worse,
        "; ".join(notes),
    )


# --------------------------------------------------------------------------------------------
# Main


def make_setup(params: Any, args: Any) -> tuple[Setup, str]:
    """The data, the crosscoder config (per-model scale factors, the sae section's width and
    ``k`` unless overridden) and the sae stage's training settings (``--quick`` or ``--tokens``:
    another token budget, the warmup at most a fifth of it)."""
    from layerwise.models import pick_device
    from layerwise.pipeline.sae import sae_width, train_config
    from layerwise.sae.crosscoder import CrosscoderConfig
    from layerwise.sae.train import estimate_scale_factor

    seed = params.seeds[0]
    train, evals, origin = load_data(params, args.task, args.layer)
    config = replace(train_config(params.sae, seed, pick_device()), progress=False)
    if args.quick:
        train = tuple(a[: QUICK["train_rows"]] for a in train)
        evals = tuple(a[: QUICK["eval_rows"]] for a in evals)
    tokens = QUICK["train_tokens"] if args.quick else args.tokens
    if tokens is not None:
        warmup = min(config.warmup_steps or 0, tokens // config.batch_size // 5)
        config = replace(config, max_tokens=tokens, epochs=None, warmup_steps=warmup)
    d = train[0].shape[1]
    cfg = CrosscoderConfig(
        d_in=d,
        d_latent=sae_width(params.sae, d) if args.width is None else args.width,
        k=params.sae.k if args.k is None else args.k,
        scale_factor_pt=estimate_scale_factor(train[0], seed=seed),
        scale_factor_ft=estimate_scale_factor(train[1], seed=seed),
    )
    return Setup(train, evals, cfg, config, peer_module("trainers.batch_top_k")), origin


def warm_up(setup: Setup, auto: Any) -> None:
    """Untimed: one-off costs of the first training in a process, for every code path."""
    short = {"max_tokens": 6 * setup.config.batch_size, "epochs": None, "warmup_steps": 1}
    tiny = replace(
        setup,
        config=replace(setup.config, **short),
        evals=tuple(e[:256] for e in setup.evals),
    )
    for dtype in {auto, None}:
        train_ours(tiny, dtype, "warm-up")
    train_peer(tiny)


def main(argv: list[str] | None = None) -> None:
    ap = bench_parser(__doc__, "~20k tokens, small sets")
    ap.add_argument("--task", default="sentiment")
    ap.add_argument("--layer", type=int, help="layer of the paired stores (default: middle)")
    ap.add_argument("--k", type=int, help="active latents per token (default: sae.k)")
    ap.add_argument("--width", type=int, help="latents (default: the sae stage's width)")
    ap.add_argument("--tokens", type=int, help="training tokens (default: sae.train_tokens)")
    args = ap.parse_args(argv)

    from layerwise.config import load_params

    params = load_params(REPO / "params.yaml")
    setup, origin = make_setup(params, args)
    auto = setup.config.autocast_dtype
    n_train, n_eval = setup.train[0].shape[0], setup.evals[0].shape[0]
    title = (
        f"crosscoder ({origin}; {n_train} train rows, {n_eval} eval rows, 2 x D={setup.cfg.d_in} "
        f"-> F={setup.cfg.d_latent}, k={setup.cfg.k}; {setup.steps} steps x "
        f"{setup.config.batch_size} = {setup.tokens} tokens; peer {PEER} BatchTopK on the "
        "concatenated rows)"
    )
    print(title, flush=True)
    warm_up(setup, auto)

    precisions = [(auto, f"auto={'bf16' if auto is not None else 'fp32'}")]
    precisions += [(None, "fp32")] * (auto is not None)
    runs = [train_ours(setup, dtype, label) for dtype, label in precisions]
    runs.append(train_peer(setup))
    for run in runs:
        print(f"  {describe(run)}", flush=True)
    for _ in range(args.repeats - 1):
        for run in runs:
            retime(run, setup)
    reads = read_seconds(setup)

    *ours, peer = runs
    matched = [matched_run(setup, peer, run.dtype, run.precision) for run in ours]
    for run in filter(None, matched):
        print(f"  {describe(run)}", flush=True)
        for _ in range(args.repeats - 1):
            retime(run, setup_for(setup, run))
    figures = [run_figure(r, setup.tokens, reads) for r in runs]
    figures += [ratio_figure(run, peer, judged=not args.quick) for run in ours]
    figures += [
        matched_figure(setup, run, match, peer, judged=not args.quick)
        for run, match in zip(ours, matched, strict=True)
    ]
    figures.append(Figure("crosscoder: peak RSS (process)", [peak_rss_gb()], "GB"))
    report(
        title,
        figures,
        args.json,
        runs=run_records(runs),
    )


if __name__ == "__main__":
    main()
