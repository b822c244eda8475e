"""SAE training throughput and quality, ours against two peer implementations on the same data.

Ours: ``layerwise.sae.train.SAETrainer`` with params.yaml's ``sae`` section (one SAE; the stage
trains its six in one pass over the data, so its per-SAE cost is at most this), in
``precision: auto`` (bfloat16 autocast on CPUs with native bf16 and on CUDA, else float32) and
in float32. Peers, both fed the very same batches (same seeded index sequence, same rows of the
same memmap), both in float32 (their default):

* ``peer``: ``dictionary-learning`` 0.1.0 (saprmarks/dictionary_learning), its
  ``StandardTrainer`` (ReLU + L1, unit-norm decoder) and ``TopKTrainer``, driven by a loop here
  that calls its ``update(step, batch)``.
* ``sae-lens``: ``sae-lens`` 6.54.12 (decoderesearch/SAELens), its own
  ``sae_lens.training.sae_trainer.SAETrainer.fit()`` (Adam, its lr scheduler, grad-norm clip
  1.0, dead-latent tracking, TopK's AuxK loss) on a ``StandardTrainingSAE`` (ReLU + L1 weighted
  by decoder row norms, free decoder norms) or a ``TopKTrainingSAE`` (its defaults: decoder
  init norm 0.1, ``rescale_acts_by_decoder_norm``, AuxK coefficient 1). Its trainer takes any
  ``DataProvider`` (an iterator of activation batches): it is handed a generator of our batches,
  so its ``ActivationsStore`` (which runs a TransformerLens model over a tokenized dataset, or
  reads its own cached-activation format) is not used and our read-only memmaps serve as they
  are. The schedule maps exactly: its ``"constant"`` scheduler with ``lr_warm_up_steps`` (a
  linear ramp from lr / warmup, as ours) and ``lr_decay_steps`` (linear to 0 over the last
  steps, as ours) gives our ``_lr_factor`` step for step. ``normalize_activations="none"``:
  it is fed ``x * s`` like the other peer (its own ``expected_average_only_in`` would take
  its norm estimate from the same iterator, consuming batches). Its ``fit()`` draws a tqdm bar
  that cannot be turned off by an argument: the module's ``tqdm`` is replaced by a disabled one.
  Its AuxK loss revives latents dead for ``dead_feature_window`` (its default, 1000) steps:
  longer than the bench's runs, as dictionary-learning's threshold is, so neither peer's AuxK
  engages here.

Why it is fair:

* Same data, same scale: the peer is fed ``x * s`` with our scale factor ``s`` (mean L2 norm
  sqrt(D), both libraries' convention), so one L1 coefficient means the same to both losses.
* Same schedule: the sae stage's own ``TrainConfig`` (lr, batch size, tokens, warmup, final
  linear decay); no sparsity warm-up on either side.
* Matched sparsity: L0 decides FVU, so the peer's L1 penalty is tuned (log-log secant on L0, a
  few full trainings) until its L0 is within 10% of ours; TopK runs use the same ``k``.
* Same quality measure: FVU = 1 - sum||x - x_hat||^2 / sum||x - mean||^2 in float64 over the
  held-out analysis store, raw space, by one function here for both (ours is also checked
  against ``layerwise.sae.evaluate.evaluate_sae``).
* Same conditions: an untimed warm-up of each code path first; the timed repeats of the
  compared configurations are interleaved.

``dictionary_learning/__init__.py`` imports its activation buffer, which needs ``nnsight`` (a
model-serving stack, not installed): the package root is registered without running it.
``sae_lens`` imports as it is, but its declared dependencies (plotly, nltk, babe, ...) are not
needed by its SAEs and trainer; what they do import (transformer-lens, whose package root
imports its model zoo; wandb, imported at the top of the trainer, never initialised here;
simple-parsing and docstring-parser for its config; jaxtyping; better-abc) is installed without
dependencies. Install both peers with ``make bench`` (``BENCH_PACKAGES`` in the Makefile,
``pip install --no-deps``); without sae-lens, ``--peers peer`` runs the first alone.

Data: the workspace's activation store of the task (``data/activations/<m>/<task>/s<seed>``,
read-only memmaps; store ``ft_L<middle layer>`` by default), else synthetic sparse data of the
same shape (said in the output). Target: ours >= 1.0x each peer's tokens/s at equal or lower
FVU (matched L0).

Usage::

    python bench/sae.py                        # L1 and TopK, params' token budget per SAE
    python bench/sae.py --quick                # ~20k tokens per SAE, small eval set
    python bench/sae.py --kinds l1 --store pt_L2 --json out.json
    python bench/sae.py --quick --peers sae-lens   # one peer only
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import timing

PEER = "dictionary-learning==0.1.0"
SAE_LENS = "sae-lens==6.54.12"
PEERS = ("peer", "sae-lens")
"""Run names of the peers: ``peer`` is dictionary-learning (the name its figures always had)."""
L0_TOLERANCE = 0.10
FVU_TOLERANCE = 0.005
"""Absolute FVU slack for "equal": two runs with different seeds differ by about this much."""
PEAK_TARGET_GB = 3.0
QUICK = {"train_tokens": 20_480, "train_rows": 20_000, "eval_rows": 2_000}


def peer_module(name: str) -> types.ModuleType:
    """``dictionary_learning.<name>``, imported with the package root registered without
    running its ``__init__`` (which needs ``nnsight``). Refuses to run without the peer."""
    if "dictionary_learning" not in sys.modules:
        spec = importlib.util.find_spec("dictionary_learning")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"the peer is not installed: pip install --no-deps {PEER} einops")
        root = types.ModuleType("dictionary_learning")
        root.__path__ = list(spec.submodule_search_locations)
        sys.modules["dictionary_learning"] = root
    return importlib.import_module(f"dictionary_learning.{name}")


def sae_lens_modules() -> types.SimpleNamespace:
    """sae-lens's training SAEs, their configs, its trainer and trainer config. Refuses to run
    without it (``make bench`` installs it with the few packages its modules import)."""
    try:
        import sae_lens
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training import sae_trainer
    except ImportError as err:
        hint = f"make bench installs {SAE_LENS} and what it imports (Makefile BENCH_PACKAGES)"
        raise SystemExit(f"sae-lens is not installed ({err}): {hint}") from err
    if not sae_lens.__version__.startswith("6."):
        raise SystemExit(f"sae-lens {sae_lens.__version__} found, the bench drives 6.x")
    sae_trainer.tqdm = functools.partial(sae_trainer.tqdm, disable=True)  # no bar argument
    return types.SimpleNamespace(
        version=sae_lens.__version__,
        standard=(sae_lens.StandardTrainingSAE, sae_lens.StandardTrainingSAEConfig),
        topk=(sae_lens.TopKTrainingSAE, sae_lens.TopKTrainingSAEConfig),
        trainer=sae_trainer.SAETrainer,
        trainer_config=SAETrainerConfig,
    )


# --------------------------------------------------------------------------------------------
# Data and the shared quality measure


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


def load_data(params: Any, task: str, store: str | None) -> tuple[Any, Any, str]:
    """(train rows, held-out analysis rows, where they came from)."""
    from layerwise.activations import ActivationStore
    from layerwise.models import load_config

    model_key = next(iter(params.models))
    layers = params.model(model_key).layers
    name = store or f"ft_L{layers[len(layers) // 2]}"
    root = timing.REPO / "data" / "activations" / model_key / task / f"s{params.seeds[0]}"
    try:
        train = ActivationStore.open(root, "train").acts(name)
        evals = ActivationStore.open(root, "analysis").acts(name)
        return train, evals, f"store {name} of {root.relative_to(timing.REPO)}"
    except (FileNotFoundError, KeyError):
        d = int(load_config(params.model(model_key).source).hidden_size)
        n_train = params.compare.token_budget
        n_eval = params.task(task).max_analysis * 25  # ~25 tokens per sentence-length text
        rows = synthetic_store(n_train + n_eval, d, seed=0)  # one dictionary for both splits
        return rows[:n_train], rows[n_train:], f"synthetic [{n_train} + {n_eval}, {d}] (no store)"


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


@dataclass
class Setup:
    """What every run shares: data, scale, the stage's training settings, the peer."""

    train: Any
    evals: Any
    scale: float
    d_sae: int
    config: Any
    """The sae stage's ``TrainConfig`` (``layerwise.pipeline.sae.train_config``)."""
    peer: Any
    """dictionary-learning's trainer modules (None: not run)."""
    sae_lens: Any = None
    """:func:`sae_lens_modules` (None: not run)."""

    @property
    def steps(self) -> int:
        return self.config.total_steps(self.train.shape[0])

    @property
    def tokens(self) -> int:
        return self.steps * self.config.batch_size


@dataclass
class Run:
    """One SAE configuration: who, how, its wall times (first run and timed repeats; the
    metrics are deterministic, so they come from the first)."""

    impl: str
    kind: str
    precision: str
    knob: float
    dtype: Any
    walls: list[float]
    metrics: dict[str, float]

    def label(self) -> str:
        knob = f"l1 {self.knob:.4g}" if self.kind == "l1" else f"k {int(self.knob)}"
        return f"{self.impl} {self.kind} {self.precision} ({knob})"


def train_ours(setup: Setup, kind: str, knob: float, dtype: Any, label: str) -> Run:
    """``SAETrainer`` on one SAE config, timed end to end (its data pass for ``b_dec``
    included, as in the stage)."""
    from layerwise.sae.evaluate import evaluate_sae
    from layerwise.sae.model import SAEConfig
    from layerwise.sae.train import SAETrainer

    cfg = SAEConfig(
        d_in=setup.train.shape[1],
        d_sae=setup.d_sae,
        sparsity=kind,
        l1_coefficient=knob if kind == "l1" else 0.0,
        k=int(knob) if kind == "topk" else 32,
        scale_factor=setup.scale,
    )
    config = replace(setup.config, autocast_dtype=dtype)
    wall, ((sae,), _) = timing.timed(lambda: SAETrainer([cfg], [setup.train], config).fit())
    sae = sae.cpu()
    metrics = heldout_metrics(lambda x: (sae.decode(z := sae.encode(x)), z), setup.evals)
    reference = evaluate_sae(sae, setup.evals)
    metrics["fvu_diff_vs_evaluate_sae"] = abs(metrics["fvu"] - reference["fvu"])
    metrics["dead_frac"] = reference["dead_frac"]
    return Run("ours", kind, label, knob, dtype, [wall], metrics)


def scaled_batches(setup: Setup) -> Iterator[Any]:
    """The batches our trainer reads (same seeded indices, same rows), scaled by our ``s``: what
    every peer is fed. Rows are read lazily, inside the peer's timed loop."""
    # The trainer's own batch order and row reader: the peers must see the very same batches.
    from layerwise.sae._arrays import read_rows
    from layerwise.sae.train import _batch_indices

    rng = np.random.default_rng(setup.config.seed)
    for idx in _batch_indices(setup.train.shape[0], setup.config.batch_size, setup.steps, rng):
        yield read_rows(setup.train, idx) * setup.scale


def peer_metrics(setup: Setup, forward: Any) -> dict[str, float]:
    """Held-out metrics, in raw space, of a peer trained on ``x * s``:
    ``forward(x_scaled) -> (x_hat_scaled, z)``."""
    import torch

    def encode_decode(x: Any) -> tuple[Any, Any]:
        x_hat, z = forward(x * setup.scale)
        return x_hat / setup.scale, z

    with torch.no_grad():
        return heldout_metrics(encode_decode, setup.evals)


def train_peer(setup: Setup, kind: str, knob: float) -> Run:
    """dictionary-learning's trainer fed our batches (:func:`scaled_batches`)."""
    config, steps = setup.config, setup.steps
    decay = config.decay(steps)
    common = dict(
        steps=steps,
        activation_dim=setup.train.shape[1],
        dict_size=setup.d_sae,
        layer=0,
        lm_name="layerwise-bench",
        lr=config.lr,
        warmup_steps=config.warmup(steps),
        decay_start=steps - decay if decay else None,
        seed=config.seed,
        device=str(config.device),
        wandb_name=None,
    )
    if kind == "l1":
        trainer = setup.peer.standard.StandardTrainer(
            **common, l1_penalty=knob, sparsity_warmup_steps=None, resample_steps=None
        )
    else:
        trainer = setup.peer.top_k.TopKTrainer(**common, k=int(knob))
    batches = scaled_batches(setup)

    def fit() -> None:
        for step, batch in enumerate(batches):
            trainer.update(step, batch)

    wall, _ = timing.timed(fit)
    ae = trainer.ae.cpu().eval()
    metrics = peer_metrics(setup, lambda x: ae(x, output_features=True))
    return Run("peer", kind, "float32", knob, None, [wall], metrics)


def sae_lens_trainer(setup: Setup, kind: str, knob: float) -> Any:
    """sae-lens's ``SAETrainer`` on a fresh SAE of ``kind``, our schedule and our batches.

    Its ``"constant"`` lr scheduler with these warmup and decay steps equals our
    ``_lr_factor``; ``lr_end = lr`` is what that scheduler uses anyway (its config leaves it
    None, which its trainer refuses). Initial weights come from torch's global generator, seeded
    here as our trainer seeds its own."""
    import torch

    sl, config, steps = setup.sae_lens, setup.config, setup.steps
    d_in, device = setup.train.shape[1], str(config.device)
    common = dict(d_in=d_in, d_sae=setup.d_sae, device=device, normalize_activations="none")
    if kind == "l1":
        sae_class, sae_config = sl.standard
        cfg = sae_config(**common, l1_coefficient=knob)
    else:
        sae_class, sae_config = sl.topk
        cfg = sae_config(**common, k=int(knob))
    torch.manual_seed(config.seed)
    trainer_cfg = sl.trainer_config(
        total_training_samples=steps * config.batch_size,
        train_batch_size_samples=config.batch_size,
        lr=config.lr,
        lr_end=config.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=config.warmup(steps),
        lr_decay_steps=config.decay(steps),
        device=device,
    )
    return sl.trainer(trainer_cfg, sae_class(cfg), scaled_batches(setup))


def train_sae_lens(setup: Setup, kind: str, knob: float) -> Run:
    """sae-lens's own ``SAETrainer.fit()`` fed our batches (:func:`scaled_batches`) as its data
    provider: exactly ``steps`` steps (it stops at ``steps * batch_size`` samples)."""
    trainer = sae_lens_trainer(setup, kind, knob)
    wall, sae = timing.timed(trainer.fit)
    if trainer.n_training_steps != setup.steps:
        raise RuntimeError(f"sae-lens ran {trainer.n_training_steps} of {setup.steps} steps")
    sae = sae.cpu().eval()
    metrics = peer_metrics(setup, lambda x: (sae.decode(z := sae.encode(x)), z))
    return Run("sae-lens", kind, "float32", knob, None, [wall], metrics)


PEER_TRAINERS: dict[str, Callable[[Setup, str, float], Run]] = {
    "peer": train_peer,
    "sae-lens": train_sae_lens,
}


def retime(run: Run, setup: Setup) -> float:
    """Wall time of the same training once more."""
    if run.impl == "ours":
        return train_ours(setup, run.kind, run.knob, run.dtype, run.precision).walls[0]
    return PEER_TRAINERS[run.impl](setup, run.kind, run.knob).walls[0]


def tune_peer_l1(
    setup: Setup, target_l0: float, start: float, tries: int, impl: str = "peer"
) -> Run:
    """Peer ``impl``'s L1 runs until L0 is within ``L0_TOLERANCE`` of ``target_l0`` (or
    ``tries`` used up); returns the closest. L0 falls roughly as a power of the penalty, so the
    next penalty comes from a secant in log-log space (slope -1 until two points exist)."""
    train = PEER_TRAINERS[impl]
    runs: list[Run] = []
    penalty = start
    for _ in range(tries):
        runs.append(run := train(setup, "l1", penalty))
        print(f"  tuning {impl}: {describe(run)} (target L0 {target_l0:.1f})", flush=True)
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
    return min(runs, key=lambda r: abs(math.log(max(r.metrics["l0"], 1e-3) / target_l0)))


def describe(run: Run) -> str:
    m = run.metrics
    return f"{run.label()}: L0 {m['l0']:.1f}, FVU {m['fvu']:.4f}, {run.walls[0]:.1f} s"


# --------------------------------------------------------------------------------------------
# Figures


def run_figure(run: Run, tokens: int) -> timing.Figure:
    m = run.metrics
    where = f"{timing.spread(run.walls)} s per SAE; FVU {m['fvu']:.4f}, L0 {m['l0']:.1f}"
    if run.impl == "ours":
        where += (
            f"; includes the b_dec data pass; FVU off evaluate_sae's by "
            f"{m['fvu_diff_vs_evaluate_sae']:.1e}"
        )
    return timing.Figure(
        f"sae {run.label()}: train", [tokens / w for w in run.walls], "tokens/s", where=where
    )


def ratio_figure(kind: str, ours: Run, peer: Run, judged: bool) -> timing.Figure:
    """Ours / peer tokens/s per interleaved repeat, judged at matched L0 and equal or lower
    FVU. Named after the peer's run (``peer`` for dictionary-learning, ``sae-lens``)."""
    ratios = [p / o for o, p in zip(ours.walls, peer.walls, strict=True)]
    l0_ok = abs(peer.metrics["l0"] / ours.metrics["l0"] - 1) <= L0_TOLERANCE
    fvu_ok = ours.metrics["fvu"] <= peer.metrics["fvu"] + FVU_TOLERANCE
    met = timing.judge(ratios, ">=", 1.0, judged=judged)
    notes = [
        f"FVU {ours.metrics['fvu']:.4f} vs {peer.metrics['fvu']:.4f}",
        f"L0 {ours.metrics['l0']:.1f} vs {peer.metrics['l0']:.1f}",
        f"wall {timing.spread(ours.walls)} s vs {timing.spread(peer.walls)} s",
    ]
    if not l0_ok:
        notes.append("L0 not matched within 10%")
    if not fvu_ok:
        notes.append("ours has higher FVU")
    return timing.Figure(
        f"sae {kind}: ours {ours.precision} / {peer.impl} tokens/s",
        ratios,
        "x",
        ">= 1.0 at <= FVU",
        None if met is None else met and l0_ok and fvu_ok,
        "; ".join(notes),
    )


# --------------------------------------------------------------------------------------------
# Main


def make_setup(
    params: Any, task: str, store: str | None, quick: bool, peers: tuple[str, ...] = PEERS
) -> tuple[Setup, str]:
    """The data, the sae stage's own training settings (``--quick``: fewer tokens, the warmup
    shortened to a fifth of them) and the ``peers`` to run (each refuses to run if missing)."""
    from layerwise.models import pick_device
    from layerwise.pipeline.sae import sae_width, train_config
    from layerwise.sae.train import estimate_scale_factor

    seed = params.seeds[0]
    train, evals, origin = load_data(params, task, store)
    config = replace(train_config(params.sae, seed, pick_device()), progress=False)
    if quick:
        train, evals = train[: QUICK["train_rows"]], evals[: QUICK["eval_rows"]]
        steps = QUICK["train_tokens"] // config.batch_size
        warmup = min(config.warmup_steps or 0, steps // 5)
        config = replace(config, max_tokens=QUICK["train_tokens"], epochs=None, warmup_steps=warmup)
    scale = estimate_scale_factor(train, seed=seed)
    d_sae = sae_width(params.sae, train.shape[1])
    peer = None
    if "peer" in peers:
        peer = types.SimpleNamespace(
            standard=peer_module("trainers.standard"), top_k=peer_module("trainers.top_k")
        )
    sae_lens = sae_lens_modules() if "sae-lens" in peers else None
    return Setup(train, evals, scale, d_sae, config, peer, sae_lens), origin


def peer_names(setup: Setup) -> list[str]:
    """The peers this setup runs, in :data:`PEERS` order."""
    loaded = [setup.peer, setup.sae_lens]
    return [name for name, mods in zip(PEERS, loaded, strict=True) if mods is not None]


def compare_kind(
    setup: Setup, kind: str, knob: float, auto: Any, args: Any
) -> tuple[list[Run], list[Run]]:
    """(ours, peers): ours in ``auto`` precision and in float32 (once where auto is float32),
    each peer at matched sparsity (an L1 peer's tuning starts from the previous peer's penalty:
    the losses share their form, MSE summed over D plus the penalty times the decoder-norm
    weighted L1), then ``repeats - 1`` interleaved timed repeats of them all."""
    auto_label = f"auto={'bf16' if auto is not None else 'fp32'}"
    precisions = [(auto, auto_label)]
    if auto is not None:  # else auto already is float32
        precisions.append((None, "fp32"))
    ours = [train_ours(setup, kind, knob, dtype, label) for dtype, label in precisions]
    for run in ours:
        print(f"  {describe(run)}", flush=True)
    peers: list[Run] = []
    for impl in peer_names(setup):
        if kind == "l1":
            tries = args.peer_tries or (2 if args.quick else 4)
            start = peers[-1].knob if peers else knob
            peers.append(tune_peer_l1(setup, ours[0].metrics["l0"], start, tries, impl))
        else:
            peers.append(PEER_TRAINERS[impl](setup, kind, knob))
            print(f"  {describe(peers[-1])}", flush=True)
    for _ in range(args.repeats - 1):
        for run in [*ours, *peers]:
            run.walls.append(retime(run, setup))
    return ours, peers


def main(argv: list[str] | None = None) -> None:
    ap = timing.bench_parser(__doc__, "~20k tokens per SAE, small sets")
    ap.add_argument("--task", default="sentiment")
    ap.add_argument("--store", help="store name, e.g. ft_L4 (default: FT, middle SAE layer)")
    ap.add_argument("--kinds", default="l1,topk", help="comma list of l1, topk")
    ap.add_argument("--peer-tries", type=int, help="peer L1 trainings to match L0 (default 4)")
    ap.add_argument(
        "--peers",
        default=",".join(PEERS),
        help="comma list of peer (dictionary-learning), sae-lens (default: both)",
    )
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or not set(kinds) <= {"l1", "topk"}:
        ap.error(f"--kinds: {kinds} (allowed: l1, topk)")
    peers = tuple(p.strip() for p in args.peers.split(",") if p.strip())
    if not peers or not set(peers) <= set(PEERS):
        ap.error(f"--peers: {args.peers!r} (allowed: {', '.join(PEERS)})")

    from layerwise.config import load_params

    params = load_params(timing.REPO / "params.yaml")
    setup, origin = make_setup(params, args.task, args.store, args.quick, peers)
    auto = setup.config.autocast_dtype
    versions = {"peer": f"peer {PEER}", "sae-lens": f"sae-lens {SAE_LENS}"}
    if setup.sae_lens is not None:  # the version that ran, if not the pinned one
        versions["sae-lens"] = f"sae-lens {setup.sae_lens.version}"
    title = (
        f"sae ({origin}; {setup.train.shape[0]} train rows, {setup.evals.shape[0]} eval rows, "
        f"D={setup.train.shape[1]} -> F={setup.d_sae}; {setup.steps} steps x "
        f"{setup.config.batch_size} = {setup.tokens} tokens per SAE; "
        f"{', '.join(versions[p] for p in peers)})"
    )
    print(title, flush=True)
    short = {"max_tokens": 6 * setup.config.batch_size, "epochs": None, "warmup_steps": 1}
    tiny = replace(setup, config=replace(setup.config, **short), evals=setup.evals[:256])
    for dtype in {auto, None}:  # untimed: one-off costs of the first training in a process
        train_ours(tiny, "l1", 1.0, dtype, "warm-up")
    for impl in peers:
        PEER_TRAINERS[impl](tiny, "l1", 1.0)

    figures, runs = [], []
    for kind in kinds:
        knob = params.sae.l1_coefficient if kind == "l1" else float(params.sae.k)
        ours, peer_runs = compare_kind(setup, kind, knob, auto, args)
        figures += [run_figure(r, setup.tokens) for r in [*ours, *peer_runs]]
        for peer in peer_runs:
            figures += [ratio_figure(kind, run, peer, judged=not args.quick) for run in ours]
        runs += [*ours, *peer_runs]
    peak = [timing.peak_rss_gb()]
    figures.append(timing.memory_figure("sae: peak RSS (process)", peak, PEAK_TARGET_GB))
    timing.report(
        title,
        figures,
        args.json,
        runs=timing.run_records(runs),
    )


if __name__ == "__main__":
    main()
