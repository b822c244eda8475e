"""Training a crosscoder (:mod:`layerwise.sae.crosscoder`) on paired PT / FT activations, and
the BatchTopK inference threshold it sets afterwards; kept apart from the model so analysis code
that only loads a saved crosscoder does not pull in the trainer."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from layerwise.sae._arrays import ArrayLike, read_rows
from layerwise.sae.crosscoder import (
    SIDES,
    Crosscoder,
    CrosscoderConfig,
    CrosscoderPass,
    crosscoder_forward,
    paired_rows,
)
from layerwise.sae.train import TrainConfig, _batch_indices, _column_mean, _lr_factor

logger = logging.getLogger(__name__)

CURVE_COLUMNS = ("step", "loss", "mse_loss", "sparsity_loss", "l0", "fvu_pt", "fvu_ft", "lr")
"""One training-curve row (averages over the steps since the previous row; FVU in scaled
space, on the batch)."""

OnLog = Callable[[int, dict[str, float]], None]
"""``on_log(step, row)`` with one curve row (keys :data:`CURVE_COLUMNS`)."""


class CrosscoderTrainer:
    """Trains one crosscoder on paired ``[N, D]`` PT and FT activations (row i of both is the
    same token): Adam with :class:`~layerwise.sae.train.TrainConfig`'s schedule (linear warmup,
    constant, linear decay), the SAE trainer's batch order, gradient-norm clipping, a finiteness
    check at every log point.

    Batchtopk: after the last step, the inference threshold is set by
    :func:`estimate_threshold` on ``threshold_batches`` batches of the training rows.

    Args:
        cfg: architecture and scale factors (estimate them per model first).
        acts_pt: ``[N, D]`` PT activations (numpy, memmap or CPU tensor; float16 is read and
            converted batch by batch).
        acts_ft: ``[N, D]`` FT activations of the same tokens.
        config: schedule, seed (batch order and, unless ``init_seeds`` has one entry, the
            initial weights), device, autocast; ``stack`` does not apply.
        on_log: called as ``on_log(step, row)`` at each log point (keys :data:`CURVE_COLUMNS`).
        threshold_batches: batches whose cutoffs the inference threshold averages.
    """

    def __init__(
        self,
        cfg: CrosscoderConfig,
        acts_pt: ArrayLike,
        acts_ft: ArrayLike,
        config: TrainConfig,
        on_log: OnLog | None = None,
        threshold_batches: int = 16,
    ) -> None:
        if threshold_batches < 1:
            raise ValueError(f"threshold_batches={threshold_batches} must be >= 1")
        self.cfg, self.config, self.on_log = cfg, config, on_log
        self.threshold_batches = threshold_batches
        self.n = paired_rows(cfg, acts_pt, acts_ft)
        self.acts = (acts_pt, acts_ft)
        self.total_steps = config.total_steps(self.n)
        self.warmup, self.decay = config.warmup(self.total_steps), config.decay(self.total_steps)
        self.device = torch.device(config.device)
        self.model = self._initial_model()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.curve: list[dict[str, float]] = []
        self._reset_window()

    def _initial_model(self) -> Crosscoder:
        """The initial crosscoder on the device, ``b_dec`` at each model's mean scaled row (a
        chunked pass over both stores that also rejects NaN/inf)."""
        model = Crosscoder(self.cfg, seed=self.config.seeds_for(1)[0])
        means = [_column_mean(a, f"acts_{side}") for a, side in zip(self.acts, SIDES, strict=True)]
        b_dec = torch.from_numpy(np.concatenate(means)).float() * model.scale_Z
        with torch.no_grad():
            model.b_dec.copy_(b_dec)
        return model.to(self.device)

    def fit(self) -> tuple[Crosscoder, list[dict[str, float]]]:
        """Train; call once. Returns the crosscoder (eval mode, on the config's device) and the
        training curve."""
        cfg = self.config
        logger.info(
            "training crosscoder %s: N=%d rows, %d steps of %d tokens, lr=%g, warmup=%d",
            self.model.extra_repr(),
            self.n,
            self.total_steps,
            cfg.batch_size,
            cfg.lr,
            self.warmup,
        )
        rng = np.random.default_rng(cfg.seed)
        batches = _batch_indices(self.n, cfg.batch_size, self.total_steps, rng)
        t0 = time.perf_counter()
        bar = tqdm(total=self.total_steps, desc="crosscoder", unit="step", disable=not cfg.progress)
        with bar:
            for step, idx_B in enumerate(batches):
                lr = self._set_lr(step)
                self._train_step(idx_B)
                bar.update(1)
                if self._window_steps == cfg.log_every or step + 1 == self.total_steps:
                    bar.set_postfix(loss=f"{self._log(step + 1, lr):.4g}")
        logger.info("trained the crosscoder in %.1f s", time.perf_counter() - t0)
        self.model.eval()
        if self.cfg.sparsity == "batchtopk":
            threshold = estimate_threshold(
                self.model,
                *self.acts,
                n_batches=self.threshold_batches,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
            )
            self.model.threshold.fill_(threshold)
        return self.model, self.curve

    def _set_lr(self, step: int) -> float:
        lr = self.config.lr * _lr_factor(step, self.total_steps, self.warmup, self.decay)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _batch(self, idx_B: np.ndarray) -> torch.Tensor:
        """Scaled, concatenated rows ``idx_B`` of both stores, on the device."""
        x = torch.cat([read_rows(a, idx_B) for a in self.acts], dim=1)
        return x.to(self.device, non_blocking=True).mul_(self.model.scale_Z)

    def _train_step(self, idx_B: np.ndarray) -> None:
        x_BZ = self._batch(idx_B)
        dtype = self.config.autocast_dtype
        with torch.autocast(
            self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None
        ):
            out = crosscoder_forward(self.model, x_BZ, use_threshold=False)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.float().backward()
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self._window += _step_metrics(x_BZ, out, self.cfg.d_in)
        self._window_steps += 1

    def _reset_window(self) -> None:
        self._window = torch.zeros(6, dtype=torch.float64, device=self.device)
        self._window_steps = 0

    def _log(self, step: int, lr: float) -> float:
        """Close the metrics window into a curve row, check it, hand it to ``on_log``; returns
        the row's loss."""
        means = (self._window / self._window_steps).tolist()
        row = dict(zip(CURVE_COLUMNS, (step, *means, lr), strict=True))
        self.curve.append(row)
        self._reset_window()
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"non-finite crosscoder loss at step {step}: lower lr?")
        logger.debug("step %d: %s", step, row)
        if self.on_log is not None:
            self.on_log(step, row)
        return row["loss"]


@torch.no_grad()
def estimate_threshold(
    cc: Crosscoder,
    acts_pt: ArrayLike,
    acts_ft: ArrayLike,
    *,
    n_batches: int = 16,
    batch_size: int = 1024,
    seed: int = 0,
) -> float:
    """The batchtopk inference threshold of ``cc``'s current weights: the mean BatchTopK cutoff
    score over ``n_batches`` batches of paired rows, drawn as training draws them but from a
    generator of their own (``seed``), in float32 as inference computes scores; see
    :mod:`layerwise.sae.batch_topk` for why after training and not during it."""
    if cc.cfg.sparsity != "batchtopk":
        raise ValueError(f"an {cc.cfg.sparsity} crosscoder has no inference threshold")
    n = paired_rows(cc.cfg, acts_pt, acts_ft)
    rng = np.random.default_rng([seed, 1])
    cutoffs = []
    for idx_B in _batch_indices(n, batch_size, n_batches, rng):
        x_BZ = cc.scale(*(read_rows(a, idx_B) for a in (acts_pt, acts_ft)))
        cutoffs.append(crosscoder_forward(cc, x_BZ, use_threshold=False).cutoff)
    return float(torch.stack(cutoffs).double().mean())


@torch.no_grad()
def _step_metrics(x_BZ: torch.Tensor, out: CrosscoderPass, d_in: int) -> torch.Tensor:
    """``[loss, mse_loss, sparsity_loss, l0, fvu_pt, fvu_ft]`` of one step (no host sync)."""
    var_2 = (x_BZ - x_BZ.mean(0)).pow(2).view(-1, 2, d_in).sum((0, 2))
    fvu_2 = out.sq_err.sum(0) / var_2.clamp_min(1e-12)
    l0 = out.latent_acts.sign().sum(-1).mean()  # acts >= 0: sign() is the firing indicator
    head = [t.double() for t in (out.loss, out.mse_loss, out.sparsity_loss, l0)]
    return torch.cat([torch.stack(head), fvu_2.double()])
