"""Training SAEs: a trainer in the manner of SAELens' ``SAETrainer``, the activation scale factor
and the finiteness check of a store.

**Many SAEs in one pass.** :class:`SAETrainer` trains S SAEs that see the same token rows (e.g.
PT and FT activations of 3 layers) with one shared shuffled index, reading each batch once. On
CUDA their weights are stacked into ``[S, D, F]`` tensors so one batched matmul replaces S small
ones; on CPU they run one after the other inside each step, which measured faster there (see
``TrainConfig.stack``). Either way every SAE runs :func:`layerwise.sae.model.scaled_forward`,
the same forward pass as :class:`~layerwise.sae.model.SparseAutoencoder`, and keeps its own loss,
gradient clipping and Adam state, so the result equals training each SAE alone with the same
seed, in both modes (tested).

Shapes are suffixed in names: ``B`` batch, ``D`` model width, ``F`` features, ``S`` SAEs in a
stack.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from layerwise.sae._arrays import (
    CHUNK_ROWS,
    ArrayLike,
    iter_chunks,
    raise_nonfinite,
    read_rows,
    resident,
    shape2d,
)
from layerwise.sae.model import (
    SAEConfig,
    SparseAutoencoder,
    init_decoder,
    normalize_rows,
    remove_parallel_grad,
    scaled_forward,
)
from layerwise.schema import SAE_CURVE_COLUMNS

logger = logging.getLogger(__name__)

OnLog = Callable[[int, list[dict[str, float]]], None]
"""``on_log(step, rows)``: one curve row per SAE (keys ``schema.SAE_CURVE_COLUMNS``)."""


# --------------------------------------------------------------------------------------------
# Data checks and scaling
# --------------------------------------------------------------------------------------------


def check_finite(acts: ArrayLike, name: str, *, chunk_rows: int = CHUNK_ROWS) -> None:
    """Raise ``ValueError`` if ``acts`` holds NaN or inf, naming ``name``, the first bad row and
    which kind. Scans ``chunk_rows`` rows at a time, so a large memmap is never loaded whole.

    A NaN in a cached activation store would otherwise surface as a NaN loss hundreds of steps
    into training, far from its cause.
    """
    shape2d(acts, name)
    for start, chunk in iter_chunks(acts, chunk_rows):
        raise_nonfinite(chunk, start, name)


def _column_mean(acts: ArrayLike, name: str) -> np.ndarray:
    """Float64 mean row of ``acts`` in one chunked pass, checking finiteness on the way."""
    n, d = shape2d(acts, name)
    total = np.zeros(d, dtype=np.float64)
    for start, chunk in iter_chunks(acts, CHUNK_ROWS):
        raise_nonfinite(chunk, start, name)
        total += chunk.sum(axis=0, dtype=np.float64)
    return total / n


def estimate_scale_factor(acts: ArrayLike, n_samples: int = 20_000, seed: int = 0) -> float:
    """Scalar ``s`` such that ``s * x`` has mean L2 norm ``sqrt(D)`` (SAELens' convention).

    Estimated on ``n_samples`` rows drawn without replacement (all rows if fewer): the mean norm
    of 20k tokens is within a fraction of a percent of the full-store value, and the SAE does
    not care about the exact value, only that it is fixed and recorded.

    Args:
        acts: ``[N, D]`` activations (array, memmap or CPU tensor).
        n_samples: rows to sample.
        seed: seed of the row sample.

    Returns:
        The scale factor, to put in ``SAEConfig.scale_factor``.
    """
    n, d = shape2d(acts, "acts")
    if n == 0:
        raise ValueError("cannot estimate a scale factor from an empty activation array (N=0)")
    if n_samples <= 0:
        raise ValueError(f"n_samples={n_samples} must be > 0")
    if n_samples >= n:
        norms = [
            np.linalg.norm(c.astype(np.float64), axis=1) for _, c in iter_chunks(acts, CHUNK_ROWS)
        ]
        norm_sum, count = float(sum(x.sum() for x in norms)), n
    else:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=n_samples, replace=False))
        rows = read_rows(acts, idx).double()
        norm_sum, count = float(rows.norm(dim=1).sum()), n_samples
    mean_norm = norm_sum / count
    if not (math.isfinite(mean_norm) and mean_norm > 0):
        raise ValueError(
            f"mean activation norm is {mean_norm}: cannot scale (all-zero or non-finite rows?)"
        )
    return math.sqrt(d) / mean_norm


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """How :class:`SAETrainer` trains: schedule, seeds and where it runs.

    The schedule is Adam with a linear warmup from ``lr / warmup`` to ``lr``, then constant,
    optionally with a linear decay over the last ``lr_decay_ratio`` of the steps (a short decay
    lowers the final loss a little).
    """

    lr: float = 3e-4
    """Peak learning rate."""
    batch_size: int = 1024
    """Tokens per step."""
    epochs: float | None = None
    """Passes over the N rows (fractions allowed). Give this or ``max_tokens``."""
    max_tokens: int | None = None
    """Total training tokens instead of ``epochs``."""
    warmup_steps: int | None = None
    """Warmup length in steps (or give ``warmup_ratio``; default no warmup)."""
    warmup_ratio: float | None = None
    """Warmup length as a fraction of the total steps."""
    lr_decay_ratio: float = 0.0
    """Fraction of the final steps over which the lr decays linearly to ~0."""
    seed: int = 0
    """Seeds the batch order and (unless ``init_seeds`` is given) the initial weights."""
    init_seeds: Sequence[int] | None = None
    """Per-SAE seeds of the initial decoder directions; by default independent seeds derived
    from ``(seed, position)``. SAE i then equals SAE 0 of a run with
    ``init_seeds=[init_seeds[i]]`` and the same ``seed``."""
    grad_clip: float | None = 1.0
    """Max gradient L2 norm per SAE (None: no clipping)."""
    device: str | torch.device = "cpu"
    """Where to train (batches are read on the CPU and moved)."""
    stack: bool | None = None
    """Run SAEs of the same shape and kind as one ``[S, D, F]`` stack with batched matmuls (True)
    or one after the other within each step (False). Same result either way (tested); only speed
    differs. None: stack on CUDA, where it replaces S small kernel launches by one; loop on CPU,
    which measured faster there (mostly the allocator: stacked ``[S, B, F]`` temporaries exceed
    glibc's mmap threshold and are fresh, page-faulted mappings every step; one SAE's stay in the
    heap and in cache)."""
    autocast_dtype: torch.dtype | None = None
    """Run the forward pass under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``:
    the matmuls run in bf16 on CPUs with AMX or AVX512-BF16 and on GPUs; weights, optimizer state
    and the loss reduction stay float32). None: plain float32."""
    l0_target: float | None = None
    """L1 SAEs only: tune each SAE's L1 coefficient while it trains so that its L0 (active
    features per token) ends near this. One coefficient leaves different activations at very
    different L0 (a fine-tuned late layer sparser than its PT twin), which confounds any
    comparison of their dictionaries; one L0 does not. The coefficient starts at the config's
    value, moves multiplicatively after warmup and is frozen for the final lr decay, so each
    SAE ends trained at the coefficient it is saved with. None: fixed coefficients."""
    l0_gain: float = 0.03
    """Per-step gain of that tuning on ``log(L0 / l0_target)``."""
    l0_max_step: float = 0.01
    """The most one step may move a coefficient (relative). Right after warmup L0 is far above
    the target and lags the coefficient; larger steps overshoot and leave features dead (10%
    steps left 14% of a fine-tuned layer's features dead, 1% steps 3%, at the same L0 and
    FVU)."""
    log_every: int = 50
    """Steps between training-curve rows (the last step always logs); each row averages the
    metrics over the steps since the previous row."""
    progress: bool = False
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr} must be finite and > 0")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        self._check_length()
        self._check_schedule()
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip} must be > 0 (or None for no clipping)")
        if self.log_every < 1:
            raise ValueError(f"log_every={self.log_every} must be >= 1")
        target = self.l0_target
        if target is not None and not (math.isfinite(target) and target > 0):
            raise ValueError(f"l0_target={self.l0_target} must be finite and > 0 (or None)")
        if not (math.isfinite(self.l0_gain) and self.l0_gain > 0):
            raise ValueError(f"l0_gain={self.l0_gain} must be finite and > 0")
        if not 0 < self.l0_max_step < 1:
            raise ValueError(f"l0_max_step={self.l0_max_step} must be in (0, 1)")

    def _check_length(self) -> None:
        epochs, max_tokens = self.epochs, self.max_tokens
        if (epochs is None) == (max_tokens is None):
            raise ValueError(f"give exactly one of epochs={epochs} and max_tokens={max_tokens}")
        if epochs is not None and not (math.isfinite(epochs) and epochs > 0):
            raise ValueError(f"epochs={epochs} must be finite and > 0")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens} must be >= 1")

    def _check_schedule(self) -> None:
        steps, ratio = self.warmup_steps, self.warmup_ratio
        if steps is not None and ratio is not None:
            raise ValueError(f"give at most one of warmup_steps={steps} and warmup_ratio={ratio}")
        if steps is not None and steps < 0:
            raise ValueError(f"warmup_steps={steps} must be >= 0")
        if ratio is not None and not 0 <= ratio < 1:
            raise ValueError(f"warmup_ratio={ratio} must be in [0, 1)")
        if not 0 <= self.lr_decay_ratio <= 1:
            raise ValueError(f"lr_decay_ratio={self.lr_decay_ratio} must be in [0, 1]")

    def total_steps(self, n: int) -> int:
        """Optimiser steps for ``n`` training rows."""
        total_tokens = (
            self.max_tokens if self.max_tokens is not None else math.ceil(self.epochs * n)
        )
        return max(1, math.ceil(total_tokens / self.batch_size))

    def warmup(self, total_steps: int) -> int:
        """Warmup steps out of ``total_steps``."""
        if self.warmup_ratio is not None:
            return round(self.warmup_ratio * total_steps)
        return self.warmup_steps or 0

    def decay(self, total_steps: int) -> int:
        """Final steps of linear lr decay out of ``total_steps``."""
        return round(self.lr_decay_ratio * total_steps)

    def seeds_for(self, n_saes: int) -> list[int]:
        """The init seed of each of ``n_saes`` SAEs.

        Independent (not shared) inits matter: features that never fire keep their initial
        decoder direction, and a shared init would make PT and FT dictionaries overlap spuriously.
        """
        if self.init_seeds is None:
            return [
                int(np.random.SeedSequence([self.seed, i]).generate_state(1)[0])
                for i in range(n_saes)
            ]
        if len(self.init_seeds) != n_saes:
            raise ValueError(f"got {len(self.init_seeds)} init_seeds for {n_saes} configs")
        return [int(s) for s in self.init_seeds]


# --------------------------------------------------------------------------------------------
# The stack: several SAEs' weights along a leading axis, run through the one forward pass
# --------------------------------------------------------------------------------------------


class _SAEStack(nn.Module):
    """S SAEs of the same shape and sparsity kind, weights stacked along a leading axis.

    Biases are stored as ``[S, 1, F]`` / ``[S, 1, D]`` so the single-SAE maths broadcasts over
    the batch axis unchanged.
    """

    def __init__(
        self, cfgs: list[SAEConfig], init_seeds: list[int], b_dec_init_SD: torch.Tensor
    ) -> None:
        super().__init__()
        self.cfgs = cfgs
        first = cfgs[0]
        self.sparsity, self.k = first.sparsity, first.k
        W_dec_SFD = torch.stack([init_decoder(first.d_in, first.d_sae, s) for s in init_seeds])
        self.W_enc = nn.Parameter(W_dec_SFD.transpose(1, 2).contiguous())
        self.b_enc = nn.Parameter(torch.zeros(len(cfgs), 1, first.d_sae))
        self.W_dec = nn.Parameter(W_dec_SFD)
        self.b_dec = nn.Parameter(b_dec_init_SD.to(torch.float32).unsqueeze(1).clone())
        self.register_buffer(
            "scale_S11", torch.tensor([c.scale_factor for c in cfgs]).view(-1, 1, 1)
        )
        self.register_buffer("l1_S", torch.tensor([c.l1_coefficient for c in cfgs]))

    def forward(self, x_raw_SBD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-SAE loss ``[S]`` (to sum and backprop) and detached metrics ``[5, S]``:
        loss, mse_loss, sparsity_loss, l0, batch fvu (scaled space)."""
        x_SBD = x_raw_SBD * self.scale_S11
        out = scaled_forward(
            self, x_SBD, sparsity=self.sparsity, k=self.k, l1_coefficient=self.l1_S
        )
        with torch.no_grad():
            # z >= 0, so sign() is the firing indicator (faster on CPU than (z > 0).sum()).
            l0_S = out.feature_acts.sign().sum(-1).mean(-1)
            var_S = (x_SBD - x_SBD.mean(1, keepdim=True)).pow(2).sum((1, 2))
            fvu_S = out.sq_err.sum(-1) / var_S.clamp_min(1e-12)
            metrics = torch.stack([out.loss, out.mse_loss, out.sparsity_loss, l0_S, fvu_S])
        return out.loss, metrics.detach()

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> None:
        """Clip each SAE's gradient to L2 norm ``max_norm`` over its own parameters (exactly what
        ``clip_grad_norm_`` does to one SAE trained alone)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        sq_S = sum(g.pow(2).sum(dim=tuple(range(1, g.ndim))) for g in grads)
        coef_S = (max_norm / (sq_S.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef_S.view(-1, *([1] * (g.ndim - 1))))

    @torch.no_grad()
    def tune_l1(self, l0_S: torch.Tensor, target: float, gain: float, max_step: float) -> None:
        """One multiplicative step of each L1 coefficient toward L0 = ``target``: up when the
        batch's L0 is above it, down when below, by at most ``max_step`` (relative)."""
        if self.sparsity != "l1":
            return
        log_err_S = l0_S.float().clamp_min(0.1).log() - math.log(target)
        bound = math.log1p(max_step)
        self.l1_S.mul_((gain * log_err_S).clamp(-bound, bound).exp())

    @torch.no_grad()
    def to_saes(self, tuned_l1: bool = False) -> list[SparseAutoencoder]:
        """The trained SAEs; with ``tuned_l1`` each config carries the coefficient it ended at."""
        cfgs = [
            replace(cfg, l1_coefficient=float(self.l1_S[j])) if tuned_l1 else cfg
            for j, cfg in enumerate(self.cfgs)
        ]
        return [
            SparseAutoencoder.from_weights(
                cfg, self.W_enc[j], self.b_enc[j, 0], self.W_dec[j], self.b_dec[j, 0]
            ).to(self.W_enc.device)
            for j, cfg in enumerate(cfgs)
        ]


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


def _batch_indices(
    n: int, batch_size: int, total_steps: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Sorted row indices per step: a fresh permutation of all N rows per epoch, consumed
    ``batch_size`` at a time across epoch boundaries (every batch full, every row equally often)."""
    perm, pos = rng.permutation(n), 0
    for _ in range(total_steps):
        parts, need = [], batch_size
        while need:
            if pos == n:
                perm, pos = rng.permutation(n), 0
            take = min(need, n - pos)
            parts.append(perm[pos : pos + take])
            pos += take
            need -= take
        yield np.sort(parts[0] if len(parts) == 1 else np.concatenate(parts))


def _lr_factor(step: int, total_steps: int, warmup: int, decay: int) -> float:
    """Linear warmup over ``warmup`` steps, constant, then linear decay over the last ``decay``."""
    factor = 1.0
    if step < warmup:
        factor = (step + 1) / warmup
    if decay > 0 and step >= total_steps - decay:
        factor = min(factor, (total_steps - step) / decay)
    return factor


def _validate_training_inputs(cfgs: Sequence[SAEConfig], datasets: Sequence[ArrayLike]) -> int:
    """N, the rows every dataset shares; fails naming the first dataset or config that is off."""
    if len(cfgs) == 0:
        raise ValueError("SAETrainer needs at least one SAEConfig")
    if len(datasets) != len(cfgs):
        raise ValueError(
            f"got {len(cfgs)} configs but {len(datasets)} datasets: pass one dataset per config "
            "(the same array object may be passed several times)"
        )
    n0 = None
    for i, (cfg, ds) in enumerate(zip(cfgs, datasets, strict=True)):
        if not isinstance(cfg, SAEConfig):
            raise ValueError(f"cfgs[{i}] is a {type(cfg).__name__}, expected SAEConfig")
        n, d = shape2d(ds, f"datasets[{i}]")
        if d != cfg.d_in:
            raise ValueError(f"datasets[{i}] has D={d} but cfgs[{i}].d_in={cfg.d_in}")
        if n0 is None:
            n0 = n
        elif n != n0:
            raise ValueError(
                f"datasets[{i}] has N={n} rows but datasets[0] has N={n0}: SAEs trained together "
                "must share token rows"
            )
    if not n0:
        raise ValueError("datasets have N=0 rows: nothing to train on")
    return n0


def _distinct(datasets: list[ArrayLike]) -> tuple[list[ArrayLike], list[int]]:
    """The distinct dataset objects (each is read once per step however many SAEs use it) and
    each position's slot among them."""
    slot_of: list[int] = []
    unique: list[ArrayLike] = []
    for ds in datasets:
        for j, u in enumerate(unique):
            if u is ds:
                slot_of.append(j)
                break
        else:
            slot_of.append(len(unique))
            unique.append(ds)
    return unique, slot_of


def _stack_groups(cfgs: list[SAEConfig], stack: bool) -> list[list[int]]:
    """Positions of the SAEs that share one stack: same (d_in, d_sae, sparsity, k) when
    stacking, one SAE each otherwise; different kinds train side by side."""
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(cfgs):
        key = (c.d_in, c.d_sae, c.sparsity, c.k if c.sparsity == "topk" else 0)
        groups.setdefault(key if stack else (i,), []).append(i)
    return list(groups.values())


class SAETrainer:
    """Trains one SAE per (config, dataset) pair in a single pass over shared token rows.

    All datasets must have the same N (row i of every dataset is the same token, e.g. PT and FT
    activations of several layers). Each step draws one batch of row indices (a fresh shuffle
    per epoch, seeded), reads those rows once per distinct dataset object, and updates every SAE:
    backward, remove the gradient parallel to the decoder rows, clip each SAE's gradient norm,
    Adam step, renormalise the decoder rows.

    Initialisation: transpose init with unit decoder rows (independent random directions per
    SAE) and ``b_dec`` = the mean of the SAE's training data times its scale factor (an exact
    chunked pass over all N rows that also checks them for NaN/inf; not the geometric median).

    Args:
        cfgs: one config per SAE (its ``scale_factor`` is used as given: estimate it first with
            :func:`estimate_scale_factor`).
        datasets: one ``[N, D]`` array per config (numpy, memmap or CPU tensor; float16 is read
            and converted to float32 batch by batch). Pass the same object several times to
            train several SAEs on one store; it is then read once per step.
        config: schedule, seeds and device.
        on_log: called as ``on_log(step, rows)`` at each log point, with one dict per SAE
            (keys ``schema.SAE_CURVE_COLUMNS``, ``sae`` = position in ``cfgs``); e.g. forward
            the rows to MLflow with ``step=step`` and a per-SAE key prefix.
    """

    def __init__(
        self,
        cfgs: Sequence[SAEConfig],
        datasets: Sequence[ArrayLike],
        config: TrainConfig,
        on_log: OnLog | None = None,
    ) -> None:
        self.cfgs, self.config, self.on_log = list(cfgs), config, on_log
        datasets = list(datasets)
        self.n = _validate_training_inputs(self.cfgs, datasets)
        init_seeds = config.seeds_for(len(self.cfgs))
        self.total_steps = config.total_steps(self.n)
        self.warmup, self.decay = config.warmup(self.total_steps), config.decay(self.total_steps)
        if config.batch_size > self.n:
            logger.warning("batch_size=%d > N=%d: a batch repeats rows", config.batch_size, self.n)
        self.device = torch.device(config.device)
        distinct, self.slot_of = _distinct(datasets)
        self.datasets = resident(distinct, self.device)
        means = [
            _column_mean(ds, f"datasets[{self.slot_of.index(j)}]")
            for j, ds in enumerate(self.datasets)
        ]
        stack = self.device.type == "cuda" if config.stack is None else config.stack
        self.members = _stack_groups(self.cfgs, stack)
        self.stacks = [self._build_stack(g, init_seeds, means) for g in self.members]
        self.optimizer = torch.optim.Adam(
            [p for s in self.stacks for p in s.parameters()], lr=config.lr
        )
        self.curve: list[dict[str, float]] = []
        self._reset_window()

    def _build_stack(
        self, group: list[int], init_seeds: list[int], means: list[np.ndarray]
    ) -> _SAEStack:
        cfgs = [self.cfgs[i] for i in group]
        b_dec = torch.stack(
            [torch.from_numpy(means[self.slot_of[i]] * self.cfgs[i].scale_factor) for i in group]
        )
        return _SAEStack(cfgs, [init_seeds[i] for i in group], b_dec).to(self.device)

    def fit(self) -> tuple[list[SparseAutoencoder], list[dict[str, float]]]:
        """Train every SAE; call once.

        Returns:
            (saes, curve): trained SAEs in ``cfgs`` order (on the config's device, eval mode),
            and the training curve, one dict per (log step, SAE).
        """
        cfg = self.config
        logger.info(
            "training %d SAE(s) in %d stack(s): N=%d rows, %d steps of %d tokens, lr=%g, warmup=%d",
            len(self.cfgs),
            len(self.stacks),
            self.n,
            self.total_steps,
            cfg.batch_size,
            cfg.lr,
            self.warmup,
        )
        rng = np.random.default_rng(cfg.seed)
        batches = _batch_indices(self.n, cfg.batch_size, self.total_steps, rng)
        t0 = time.perf_counter()
        bar = tqdm(
            total=self.total_steps, desc="SAE training", unit="step", disable=not cfg.progress
        )
        with bar:
            for step, idx_B in enumerate(batches):
                lr = self._set_lr(step)
                self._train_step(idx_B, tune=self._tunes(step))
                bar.update(1)
                if self._window_steps == cfg.log_every or step + 1 == self.total_steps:
                    rows = self._log(step + 1, lr)
                    bar.set_postfix(loss=f"{np.mean([r['loss'] for r in rows]):.4g}")
        seconds = time.perf_counter() - t0
        logger.info(
            "trained %d SAE(s) for %d steps in %.1f s", len(self.cfgs), self.total_steps, seconds
        )
        return self._trained_saes(), self.curve

    def _set_lr(self, step: int) -> float:
        lr = self.config.lr * _lr_factor(step, self.total_steps, self.warmup, self.decay)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _autocast(self) -> torch.autocast:
        dtype = self.config.autocast_dtype
        return torch.autocast(
            self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None
        )

    def _tunes(self, step: int) -> bool:
        """Whether the L1 coefficients move after ``step``: between warmup and the final decay."""
        if self.config.l0_target is None:
            return False
        return self.warmup <= step < self.total_steps - self.decay

    def _train_step(self, idx_B: np.ndarray, tune: bool = False) -> None:
        """One optimiser step of every SAE on rows ``idx_B``; adds their metrics to the window
        and, with ``tune``, moves the L1 coefficients toward the target L0."""
        rows = [read_rows(ds, idx_B) for ds in self.datasets]
        self.optimizer.zero_grad(set_to_none=True)
        for gi, (group, sae_stack) in enumerate(zip(self.members, self.stacks, strict=True)):
            if len(group) == 1:
                x_SBD = rows[self.slot_of[group[0]]].unsqueeze(0)
            else:
                x_SBD = torch.stack([rows[self.slot_of[i]] for i in group])
            with self._autocast():
                loss_S, metrics = sae_stack(x_SBD.to(self.device, non_blocking=True))
            loss_S.float().sum().backward()
            self._window[gi] += metrics
            if tune:
                cfg = self.config
                sae_stack.tune_l1(metrics[3], cfg.l0_target, cfg.l0_gain, cfg.l0_max_step)
            remove_parallel_grad(sae_stack.W_dec)
            if self.config.grad_clip is not None:
                sae_stack.clip_grad_norm_(self.config.grad_clip)
        self.optimizer.step()
        for sae_stack in self.stacks:
            normalize_rows(sae_stack.W_dec)
        self._window_steps += 1

    def _reset_window(self) -> None:
        self._window = [torch.zeros(5, len(g), device=self.device) for g in self.members]
        self._window_steps = 0

    def _log(self, step: int, lr: float) -> list[dict[str, float]]:
        """Close the metrics window into one curve row per SAE, check it, hand it to ``on_log``."""
        rows: list[dict[str, float]] = [{}] * len(self.cfgs)
        for group, window in zip(self.members, self._window, strict=True):
            means = (window / self._window_steps).T.tolist()  # [S][loss, mse, sparsity, l0, fvu]
            for j, i in enumerate(group):
                rows[i] = dict(zip(SAE_CURVE_COLUMNS, (step, i, *means[j], lr), strict=True))
        self.curve.extend(rows)
        self._reset_window()
        self._check_finite(step, rows)
        logger.debug("step %d: %s", step, rows)
        if self.on_log is not None:
            self.on_log(step, rows)
        return rows

    @staticmethod
    def _check_finite(step: int, rows: list[dict[str, float]]) -> None:
        bad = [r["sae"] for r in rows if not math.isfinite(r["loss"])]
        if bad:
            raise FloatingPointError(
                f"non-finite SAE loss at step {step} for SAE(s) {bad}: lower lr?"
            )

    def _trained_saes(self) -> list[SparseAutoencoder]:
        saes: list[SparseAutoencoder | None] = [None] * len(self.cfgs)
        for group, sae_stack in zip(self.members, self.stacks, strict=True):
            tuned = self.config.l0_target is not None
            for i, sae in zip(group, sae_stack.to_saes(tuned_l1=tuned), strict=True):
                saes[i] = sae.eval()
        return saes  # type: ignore[return-value]
