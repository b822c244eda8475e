"""Sparse autoencoders (SAEs) on cached transformer activations.

An SAE maps a token activation ``x`` (one row of a ``[N, D]`` activation store) to nonnegative
feature activations ``z = act((s * x - b_dec) @ W_enc + b_enc)`` and back to
``x_hat = (z @ W_dec + b_dec) / s``, where ``s`` is ``SAEConfig.scale_factor``.

Conventions (see ``/work/shared/STYLE.md``):

* **Scaling.** ``s`` is estimated so that scaled activations have mean L2 norm ``sqrt(D)``
  (:func:`estimate_scale_factor`, the SAELens convention), which makes one ``l1_coefficient`` and
  one learning rate work across layers and models whose activation norms differ by 10x.
  Training and the losses in :class:`SAEOutput` live in scaled space (that is what is optimised);
  the public API (``encode`` takes raw activations, ``decode`` returns raw activations) and every
  metric of :func:`evaluate_sae` live in raw space, so numbers compare across scale factors.
  :meth:`SparseAutoencoder.fold_scale_factor` rewrites the weights so that ``s = 1``.
* **Loss normalisation.** ``mse_loss`` is the squared error *summed over the D dims* and averaged
  over tokens; ``sparsity_loss`` (L1 SAEs) is ``sum_f |z_f|`` averaged over tokens. Both terms are
  per-token sums, so their ratio (and thus the meaning of ``l1_coefficient``) does not change with
  the batch size, and with the ``sqrt(D)`` scaling above the values match SAELens' (typical
  ``l1_coefficient`` 1 to 10). The paper's raw-space ``mean(err^2) + 1e-3 * mean|z|`` (means
  over dims and features too) corresponds to ``l1_coefficient = 1e-3 * D / F * scale_factor``
  here (the loss is then the paper's times ``D * scale_factor^2``, i.e. the same minimiser).
* **Unit-norm decoder rows** are kept by *projection*, not by weighting the L1 penalty by the
  decoder norms: before each optimiser step the gradient component parallel to each decoder row
  is removed, after it the rows are renormalised. With unit rows ``sum_f |z_f|`` is exactly the
  norm-weighted L1, and the features' scale lives in ``z`` only, which the features stage needs.
* **Initialisation.** Decoder rows are random unit vectors, ``W_enc = W_dec.T`` (transpose init),
  ``b_enc = 0``, and ``b_dec`` is the mean of the (scaled) training data (not the geometric
  median: cheaper, and the difference is washed out within the first few hundred steps).
* **Training many SAEs in one pass.** :func:`train_saes` trains S SAEs that see the same token
  rows (e.g. PT and FT activations of 3 layers) with one shared shuffled index, reading each
  batch once. On CUDA their weights are stacked into ``[S, D, F]`` tensors so one batched matmul
  replaces S small ones; on CPU they run one after the other inside each step, which measured
  faster there (see ``stack`` in :func:`train_saes`). Every SAE's loss, gradient clipping and
  Adam state are its own, so the result equals training each SAE alone with the same seed, in
  both modes (tested).

Shapes are suffixed in names: ``B`` batch, ``D`` model width (``d_in``), ``F`` features
(``d_sae``), ``S`` SAEs in a stack.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn.functional import cosine_similarity

logger = logging.getLogger(__name__)

__all__ = [
    "CURVE_KEYS",
    "EVAL_METRIC_KEYS",
    "SPARSITY_KINDS",
    "SAEConfig",
    "SAEEvaluation",
    "SAEOutput",
    "SparseAutoencoder",
    "check_finite",
    "estimate_scale_factor",
    "evaluate_sae",
    "evaluate_sae_detailed",
    "feature_frequencies",
    "load_sae",
    "numpy_encoder",
    "save_sae",
    "train_saes",
]

SPARSITY_KINDS = ("l1", "topk")
"""Allowed values of ``SAEConfig.sparsity``."""

WEIGHTS_FILENAME = "sae_weights.safetensors"
CFG_FILENAME = "cfg.json"
FORMAT_VERSION = "layerwise-sae-1"

EVAL_METRIC_KEYS = ("mse", "explained_variance", "fvu", "l0", "dead_frac", "dense_frac", "cos_sim")
"""Exact key set of :func:`evaluate_sae` (stages namespace them, e.g. ``sae/fvu``)."""

CURVE_KEYS = ("step", "sae", "loss", "mse_loss", "sparsity_loss", "l0", "fvu", "lr")
"""Exact key set of each training-curve row returned by :func:`train_saes`."""

_CHUNK_ROWS = 65_536
"""Rows read at a time when scanning a whole store (keeps memmap reads bounded)."""

ArrayLike = Any
"""A ``[N, D]`` numpy array, ``np.memmap`` or CPU torch tensor (float16 or float32)."""


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"sae.{name}={value!r} must be an integer")
    return int(value)


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"sae.{name}={value!r} must be a number")
    return float(value)


@dataclass
class SAEConfig:
    """Architecture, sparsity and activation scaling of one SAE (saved as ``cfg.json``)."""

    d_in: int
    """Width D of the activations the SAE reads (the model's hidden size)."""
    d_sae: int
    """Number of dictionary features F (the field uses 8-32 x ``d_in``; the paper 1.33 x)."""
    sparsity: str = "l1"
    """``"l1"``: ReLU features, loss = mse + ``l1_coefficient`` * L1. ``"topk"``: keep the ``k``
    largest pre-activations per token (ReLU after), loss = mse only."""
    l1_coefficient: float = 5.0
    """Weight of the L1 penalty (``l1`` only). Per-token sums on both terms, scaled space: see the
    module docstring for how the paper's 1e-3 translates."""
    k: int = 32
    """Active features per token for ``topk`` (ignored by ``l1``)."""
    scale_factor: float = 1.0
    """Raw activations are multiplied by this before the SAE sees them (and reconstructions
    divided by it); see :func:`estimate_scale_factor`. 1.0 means no scaling."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance written to ``cfg.json`` (model, task, layer, PT/FT, git commit, ...).
    Must be JSON-serialisable to be saved."""

    def __post_init__(self) -> None:
        self.d_in = _as_int("d_in", self.d_in)
        self.d_sae = _as_int("d_sae", self.d_sae)
        self.k = _as_int("k", self.k)
        self.l1_coefficient = _as_float("l1_coefficient", self.l1_coefficient)
        self.scale_factor = _as_float("scale_factor", self.scale_factor)
        if self.d_in <= 0:
            raise ValueError(f"sae.d_in={self.d_in} must be > 0")
        if self.d_sae <= 0:
            raise ValueError(f"sae.d_sae={self.d_sae} must be > 0")
        if self.sparsity not in SPARSITY_KINDS:
            raise ValueError(
                f"sae.sparsity={self.sparsity!r} must be one of {list(SPARSITY_KINDS)}"
            )
        if self.sparsity == "topk" and not 1 <= self.k <= self.d_sae:
            raise ValueError(f"sae.k={self.k} must be between 1 and d_sae={self.d_sae}")
        if not (math.isfinite(self.l1_coefficient) and self.l1_coefficient >= 0):
            raise ValueError(f"sae.l1_coefficient={self.l1_coefficient} must be finite and >= 0")
        if not (math.isfinite(self.scale_factor) and self.scale_factor > 0):
            raise ValueError(f"sae.scale_factor={self.scale_factor} must be finite and > 0")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"sae.metadata={self.metadata!r} must be a dict")


# --------------------------------------------------------------------------------------------
# The math, shared by the single module and the training stack
# --------------------------------------------------------------------------------------------
# Every helper works on a single SAE (W_enc [D, F], b_enc [F], x [..., D]) and on a stack
# (W_enc [S, D, F], b_enc [S, 1, F], x [S, B, D]), where it uses batched matmuls.


def _pre_acts(x_scaled: torch.Tensor, W_enc, b_enc, b_dec) -> torch.Tensor:
    """``(x - b_dec) @ W_enc + b_enc``, computed as ``x @ W_enc + (b_enc - b_dec @ W_enc)``.

    Same value, but ``x`` (which needs no gradient) is never shifted, so backward skips the
    ``[B, F] @ [F, D]`` matmul that the gradient of ``b_dec`` through ``x - b_dec`` would cost
    (one of six big matmuls per step); ``b_dec``'s encoder gradient becomes a matrix-vector
    product. The bias is fused into the matmul.
    """
    bias = b_enc - b_dec @ W_enc
    if W_enc.dim() == 3:
        return torch.baddbmm(bias, x_scaled, W_enc)
    if x_scaled.dim() == 2:
        return torch.addmm(bias, x_scaled, W_enc)
    return x_scaled @ W_enc + bias


def _activate(pre: torch.Tensor, sparsity: str, k: int) -> torch.Tensor:
    """ReLU (in place: ``pre`` is a fresh temporary) or TopK-then-ReLU feature activations."""
    if sparsity == "topk":
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    return pre.relu_()


def _decode_scaled(z: torch.Tensor, W_dec, b_dec) -> torch.Tensor:
    if W_dec.dim() == 3:
        return torch.baddbmm(b_dec, z, W_dec)
    if z.dim() == 2:
        return torch.addmm(b_dec, z, W_dec)
    return z @ W_dec + b_dec


def _losses(
    x_scaled: torch.Tensor, x_hat_scaled: torch.Tensor, z: torch.Tensor, sparsity: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mse, sparsity, per-token squared error), reduced over the token axis (-2): sums over
    dims / features, mean over tokens."""
    sq_err = (x_hat_scaled - x_scaled).pow(2).sum(-1)
    mse = sq_err.mean(-1)
    # z >= 0 after the ReLU, so its sum is its L1 norm (and skips abs in the backward pass).
    sparsity_loss = z.sum(-1).mean(-1) if sparsity == "l1" else torch.zeros_like(mse)
    return mse, sparsity_loss, sq_err


@torch.no_grad()
def _remove_parallel_grad(W_dec: torch.Tensor) -> None:
    """Project out the gradient component along each (unit) decoder row, in place."""
    if W_dec.grad is None:
        return
    parallel = (W_dec.grad * W_dec).sum(-1, keepdim=True)
    W_dec.grad.sub_(parallel * W_dec)


@torch.no_grad()
def _normalize_rows(W_dec: torch.Tensor) -> None:
    W_dec.div_(W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def _init_decoder(d_in: int, d_sae: int, seed: int) -> torch.Tensor:
    """Random unit-norm decoder rows ``[F, D]``, from a private CPU generator (device-independent,
    leaves the global torch RNG alone)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    W_dec = torch.randn(d_sae, d_in, generator=gen, dtype=torch.float32)
    return W_dec / W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


class SAEOutput(NamedTuple):
    """What :meth:`SparseAutoencoder.forward` returns."""

    x_hat: torch.Tensor
    """Reconstruction in raw activation space, same shape as the input (== decode(encode(x)))."""
    feature_acts: torch.Tensor
    """Feature activations ``[..., F]`` (nonnegative)."""
    loss: torch.Tensor
    """Scalar training loss in scaled space: ``mse_loss + l1_coefficient * sparsity_loss``."""
    mse_loss: torch.Tensor
    """Scaled-space squared error summed over dims, mean over tokens."""
    sparsity_loss: torch.Tensor
    """Sum of feature activations, mean over tokens (0 for topk)."""


class SparseAutoencoder(nn.Module):
    """A ReLU (L1) or TopK sparse autoencoder with unit-norm decoder rows.

    Parameters: ``W_enc [D, F]``, ``b_enc [F]``, ``W_dec [F, D]``, ``b_dec [D]`` (float32). The
    decoder bias is subtracted before encoding, so ``b_dec`` is the SAE's "origin". Decoder rows
    are kept at unit norm by projection (:meth:`remove_gradient_parallel_to_decoder_directions`
    before the optimiser step, :meth:`set_decoder_norm_to_unit_norm` after it), not by weighting
    the L1 penalty by decoder norms.

    Args:
        cfg: architecture, sparsity and scale factor.
        seed: seed of the random decoder directions (transpose init; ``b_dec`` starts at 0,
            :func:`train_saes` sets it to the data mean).
    """

    def __init__(self, cfg: SAEConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        W_dec_FD = _init_decoder(cfg.d_in, cfg.d_sae, seed)
        self.W_enc = nn.Parameter(W_dec_FD.T.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(W_dec_FD)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    @classmethod
    def from_weights(
        cls,
        cfg: SAEConfig,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_dec: torch.Tensor,
    ) -> SparseAutoencoder:
        """Build an SAE from given weights (copied, float32); shapes are checked against cfg.

        Decoder rows are *not* renormalised: hand-built SAEs (tests, folded SAEs) keep theirs.
        """
        sae = cls(cfg)
        sae.load_state_dict(
            {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, strict=True
        )
        return sae

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def extra_repr(self) -> str:
        c = self.cfg
        extra = f", k={c.k}" if c.sparsity == "topk" else f", l1_coefficient={c.l1_coefficient}"
        return f"d_in={c.d_in}, d_sae={c.d_sae}, sparsity={c.sparsity}{extra}, " + (
            f"scale_factor={c.scale_factor:.6g}"
        )

    def _scale(self, x_raw: torch.Tensor) -> torch.Tensor:
        x = x_raw.to(device=self.W_enc.device, dtype=self.W_enc.dtype)
        return x * self.cfg.scale_factor

    def encode(self, x_raw: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., F]`` of raw activations ``[..., D]`` (scaled inside)."""
        pre = _pre_acts(self._scale(x_raw), self.W_enc, self.b_enc, self.b_dec)
        return _activate(pre, self.cfg.sparsity, self.cfg.k)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """Raw-space reconstruction ``[..., D]`` from feature activations ``[..., F]``."""
        return _decode_scaled(feature_acts, self.W_dec, self.b_dec) / self.cfg.scale_factor

    def forward(self, x_raw: torch.Tensor) -> SAEOutput:
        """Reconstruct ``x_raw [..., D]``; losses are in scaled space and averaged over tokens."""
        x_scaled = self._scale(x_raw)
        z = _activate(
            _pre_acts(x_scaled, self.W_enc, self.b_enc, self.b_dec), self.cfg.sparsity, self.cfg.k
        )
        x_hat_scaled = _decode_scaled(z, self.W_dec, self.b_dec)
        d, f = self.cfg.d_in, self.cfg.d_sae
        mse, sparsity_loss, _ = _losses(
            x_scaled.reshape(-1, d),
            x_hat_scaled.reshape(-1, d),
            z.reshape(-1, f),
            self.cfg.sparsity,
        )
        loss = mse + self.cfg.l1_coefficient * sparsity_loss
        return SAEOutput(x_hat_scaled / self.cfg.scale_factor, z, loss, mse, sparsity_loss)

    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Call after ``backward()``, before ``optimizer.step()``: a step along a decoder row only
        changes its norm, which the renormalisation would undo (and Adam would keep pushing)."""
        _remove_parallel_grad(self.W_dec)

    def set_decoder_norm_to_unit_norm(self) -> None:
        """Call after ``optimizer.step()``: rescale every decoder row to unit L2 norm."""
        _normalize_rows(self.W_dec)

    @torch.no_grad()
    def fold_scale_factor(self) -> SparseAutoencoder:
        """An equivalent SAE with ``scale_factor = 1``: same ``encode`` and ``decode`` on raw
        activations, with the scale folded into the weights (``W_enc * s``, ``W_dec / s``,
        ``b_dec / s``).

        Use it to export to tools that know nothing about scaling. Its decoder rows have norm
        ``1 / s`` (not unit), and its ``forward`` losses are in raw space; do not train it further.
        The original scale is kept in ``metadata["folded_scale_factor"]``.
        """
        s = self.cfg.scale_factor
        metadata = {**self.cfg.metadata, "folded_scale_factor": s}
        cfg = replace(self.cfg, scale_factor=1.0, metadata=metadata)
        sae = SparseAutoencoder.from_weights(
            cfg, self.W_enc * s, self.b_enc, self.W_dec / s, self.b_dec / s
        )
        return sae.to(self.device)


def _on_device(sae: SparseAutoencoder, device: str | torch.device | None) -> SparseAutoencoder:
    """``sae`` itself if already on ``device`` (None: where it is), else a copy there: ``.to`` is
    in place for modules, and evaluating on another device must not move the caller's SAE."""
    if device is None or torch.device(device) == sae.device:
        return sae
    return copy.deepcopy(sae).to(device)


def numpy_encoder(
    sae: SparseAutoencoder, device: str | torch.device | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy ``[n, D] -> float32 [n, F]`` encode callable (what ``layerwise.features`` takes)."""
    sae = _on_device(sae, device)

    @torch.no_grad()
    def encode(x: np.ndarray) -> np.ndarray:
        x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(sae.device)
        return sae.encode(x_t).cpu().numpy()

    return encode


# --------------------------------------------------------------------------------------------
# Data helpers
# --------------------------------------------------------------------------------------------


def _shape2d(acts: ArrayLike, name: str) -> tuple[int, int]:
    shape = tuple(getattr(acts, "shape", ()))
    if len(shape) != 2:
        raise ValueError(f"{name} must be a 2-d [N, D] array, got shape {shape}")
    return int(shape[0]), int(shape[1])


def _rows_numpy(acts: ArrayLike, start: int, stop: int) -> np.ndarray:
    chunk = acts[start:stop]
    if isinstance(chunk, torch.Tensor):
        chunk = chunk.detach().cpu().numpy()
    return np.asarray(chunk)


def _read_rows(acts: ArrayLike, idx_B: np.ndarray) -> torch.Tensor:
    """Rows ``idx_B`` (sorted: sequential-ish memmap reads) as a float32 CPU tensor ``[B, D]``."""
    if isinstance(acts, torch.Tensor):
        return acts[torch.from_numpy(idx_B).to(acts.device)].detach().to("cpu", torch.float32)
    return torch.from_numpy(np.ascontiguousarray(acts[idx_B], dtype=np.float32))


def _raise_nonfinite(chunk: np.ndarray, offset: int, name: str) -> None:
    """Raise naming the first non-finite row of ``chunk`` (global index ``offset + row``)."""
    finite = np.isfinite(chunk)
    if finite.all():
        return
    row = int(np.argmin(finite.all(axis=1)))
    bad = chunk[row]
    kinds = [k for k, m in (("NaN", np.isnan(bad)), ("inf", np.isinf(bad))) if m.any()]
    raise ValueError(
        f"{name} has non-finite values: first bad row is {offset + row} "
        f"(contains {' and '.join(kinds)})"
    )


def _iter_chunks(acts: ArrayLike, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    n, _ = _shape2d(acts, "acts")
    for start in range(0, n, chunk_rows):
        yield start, _rows_numpy(acts, start, min(start + chunk_rows, n))


def check_finite(acts: ArrayLike, name: str, *, chunk_rows: int = _CHUNK_ROWS) -> None:
    """Raise ``ValueError`` if ``acts`` holds NaN or inf, naming ``name``, the first bad row and
    which kind. Scans ``chunk_rows`` rows at a time, so a large memmap is never loaded whole.

    A NaN in a cached activation store would otherwise surface as a NaN loss hundreds of steps
    into training, far from its cause.
    """
    _shape2d(acts, name)
    for start, chunk in _iter_chunks(acts, chunk_rows):
        _raise_nonfinite(chunk, start, name)


def _column_mean(acts: ArrayLike, name: str, check: bool) -> np.ndarray:
    """Float64 mean row of ``acts`` in one chunked pass (checking finiteness on the way)."""
    n, d = _shape2d(acts, name)
    total = np.zeros(d, dtype=np.float64)
    for start, chunk in _iter_chunks(acts, _CHUNK_ROWS):
        if check:
            _raise_nonfinite(chunk, start, name)
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
    n, d = _shape2d(acts, "acts")
    if n == 0:
        raise ValueError("cannot estimate a scale factor from an empty activation array (N=0)")
    if n_samples <= 0:
        raise ValueError(f"n_samples={n_samples} must be > 0")
    if n_samples >= n:
        norms = [
            np.linalg.norm(c.astype(np.float64), axis=1) for _, c in _iter_chunks(acts, _CHUNK_ROWS)
        ]
        norm_sum, count = float(sum(x.sum() for x in norms)), n
    else:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=n_samples, replace=False))
        rows = _read_rows(acts, idx).double()
        norm_sum, count = float(rows.norm(dim=1).sum()), n_samples
    mean_norm = norm_sum / count
    if not (math.isfinite(mean_norm) and mean_norm > 0):
        raise ValueError(
            f"mean activation norm is {mean_norm}: cannot scale (all-zero or non-finite rows?)"
        )
    return math.sqrt(d) / mean_norm


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


class _SAEStack(nn.Module):
    """S SAEs of the same shape and sparsity kind, weights stacked along a leading axis.

    Biases are stored as ``[S, 1, F]`` / ``[S, 1, D]`` so the single-SAE math broadcasts over
    the batch axis unchanged.
    """

    def __init__(
        self,
        cfgs: list[SAEConfig],
        init_seeds: list[int],
        b_dec_init_SD: torch.Tensor,
    ) -> None:
        super().__init__()
        self.cfgs = cfgs
        first = cfgs[0]
        self.sparsity, self.k = first.sparsity, first.k
        W_dec_SFD = torch.stack([_init_decoder(first.d_in, first.d_sae, s) for s in init_seeds])
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
        z_SBF = _activate(
            _pre_acts(x_SBD, self.W_enc, self.b_enc, self.b_dec), self.sparsity, self.k
        )
        x_hat_SBD = _decode_scaled(z_SBF, self.W_dec, self.b_dec)
        mse_S, sparsity_S, sq_err_SB = _losses(x_SBD, x_hat_SBD, z_SBF, self.sparsity)
        loss_S = mse_S + self.l1_S * sparsity_S
        with torch.no_grad():
            # z >= 0, so sign() is the firing indicator (3x faster on CPU than (z > 0).sum()).
            l0_S = z_SBF.sign().sum(-1).mean(-1)
            var_S = (x_SBD - x_SBD.mean(1, keepdim=True)).pow(2).sum((1, 2))
            fvu_S = sq_err_SB.sum(-1) / var_S.clamp_min(1e-12)
            metrics = torch.stack([loss_S, mse_S, sparsity_S, l0_S, fvu_S]).detach()
        return loss_S, metrics

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
    def to_saes(self) -> list[SparseAutoencoder]:
        return [
            SparseAutoencoder.from_weights(
                cfg, self.W_enc[j], self.b_enc[j, 0], self.W_dec[j], self.b_dec[j, 0]
            ).to(self.W_enc.device)
            for j, cfg in enumerate(self.cfgs)
        ]


def _default_init_seeds(seed: int, n: int) -> list[int]:
    """Independent init seeds per SAE position, derived from ``seed``.

    Independent (not shared) inits matter: features that never fire keep their initial decoder
    direction, and a shared init would make PT and FT dictionaries overlap spuriously.
    """
    return [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(n)]


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
    if len(cfgs) == 0:
        raise ValueError("train_saes needs at least one SAEConfig")
    if len(datasets) != len(cfgs):
        raise ValueError(
            f"got {len(cfgs)} configs but {len(datasets)} datasets: pass one dataset per config "
            "(the same array object may be passed several times)"
        )
    n0 = None
    for i, (cfg, ds) in enumerate(zip(cfgs, datasets, strict=True)):
        if not isinstance(cfg, SAEConfig):
            raise ValueError(f"cfgs[{i}] is a {type(cfg).__name__}, expected SAEConfig")
        n, d = _shape2d(ds, f"datasets[{i}]")
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


def train_saes(
    cfgs: Sequence[SAEConfig],
    datasets: Sequence[ArrayLike],
    *,
    lr: float = 3e-4,
    batch_size: int = 1024,
    epochs: float | None = None,
    max_tokens: int | None = None,
    warmup_steps: int | None = None,
    warmup_ratio: float | None = None,
    lr_decay_ratio: float = 0.0,
    seed: int = 0,
    init_seeds: Sequence[int] | None = None,
    grad_clip: float | None = 1.0,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    device: str | torch.device = "cpu",
    stack: bool | None = None,
    log_every: int = 50,
    on_log: Callable[[int, list[dict[str, float]]], None] | None = None,
    progress: bool = False,
    check_data: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[list[SparseAutoencoder], list[dict[str, float]]]:
    """Train one SAE per (config, dataset) pair in a single pass over shared token rows.

    All datasets must have the same N (row i of every dataset is the same token, e.g. PT and FT
    activations of several layers). Each step draws one batch of row indices (a fresh shuffle
    per epoch, seeded), reads those rows once per distinct dataset object, and updates every SAE.
    SAEs of the same shape and sparsity kind can be stacked into ``[S, D, F]`` weights and run
    with batched matmuls (``stack``); each SAE keeps its own loss, gradient clipping and Adam
    state, so the result is the same as training it alone with the same ``seed`` and init seed.

    Initialisation: transpose init with unit decoder rows (independent random directions per
    SAE) and ``b_dec`` = the mean of the SAE's training data times its scale factor (an exact
    chunked pass over all N rows; not the geometric median).

    Schedule: Adam; linear warmup from ``lr / warmup`` to ``lr``, then constant, optionally with a
    linear decay over the last ``lr_decay_ratio`` of the steps (off by default, as in the paper's
    SAE setup; a short decay lowers the final loss a little). Each step: backward, remove the
    gradient parallel to the decoder rows, clip each SAE's gradient norm, Adam step, renormalise
    the decoder rows.

    Args:
        cfgs: one config per SAE (its ``scale_factor`` is used as given: estimate it first with
            :func:`estimate_scale_factor`).
        datasets: one ``[N, D]`` array per config (numpy, memmap or CPU tensor; float16 is read
            and converted to float32 batch by batch). Pass the same object several times to
            train several SAEs on one store; it is then read once per step.
        lr: peak learning rate.
        batch_size: tokens per step.
        epochs: passes over the N rows (fractions allowed). Give this or ``max_tokens``.
        max_tokens: total training tokens instead of ``epochs``.
        warmup_steps: warmup length in steps (or give ``warmup_ratio``; default no warmup).
        warmup_ratio: warmup length as a fraction of the total steps.
        lr_decay_ratio: fraction of the final steps over which the lr decays linearly to ~0.
        seed: seeds the batch order and (unless ``init_seeds`` is given) the initial weights.
        init_seeds: per-SAE seeds of the initial decoder directions; by default independent
            seeds derived from ``(seed, position)``. SAE i here equals SAE 0 of a run with
            ``init_seeds=[init_seeds[i]]`` and the same ``seed``.
        grad_clip: max gradient L2 norm per SAE (None: no clipping).
        adam_betas: Adam betas.
        device: torch device to train on (batches are read on the CPU and moved).
        stack: run SAEs of the same shape and kind as one ``[S, D, F]`` stack with batched
            matmuls (True) or one after the other within each step (False). Same result either
            way (tested); only speed differs. None (default): stack on CUDA, where it replaces S
            small kernel launches by one; loop on CPU, where S=6 SAEs of 384 -> 1536 measured
            20-30% faster one by one (mostly the allocator: stacked ``[S, B, F]`` temporaries
            exceed glibc's mmap threshold and are fresh, page-faulted mappings every step; one
            SAE's stay in the heap and in cache). The batch is read once per step either way.
        autocast_dtype: run the forward pass under ``torch.autocast`` with this dtype (e.g.
            ``torch.bfloat16``: the encoder/decoder matmuls run in bf16 on CPUs with AMX or
            AVX512-BF16 and on GPUs, several times faster; weights, optimizer state and the loss
            reduction stay float32). None: plain float32.
        log_every: steps between training-curve rows (the last step always logs). Each row
            averages the metrics over the steps since the previous row.
        on_log: called as ``on_log(step, rows)`` at each log point, with one dict per SAE
            (keys :data:`CURVE_KEYS`, ``sae`` = position in ``cfgs``); e.g. forward the rows to
            MLflow with ``step=step`` and a per-SAE key prefix.
        progress: show a tqdm progress bar.
        check_data: scan every dataset for NaN/inf before training (one extra chunked pass,
            shared with the ``b_dec`` initialisation pass).

    Returns:
        (saes, curve): trained SAEs in ``cfgs`` order (on ``device``, eval mode), and the
        training curve, one dict per (log step, SAE).
    """
    cfgs = list(cfgs)
    datasets = list(datasets)
    n = _validate_training_inputs(cfgs, datasets)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr} must be finite and > 0")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if (epochs is None) == (max_tokens is None):
        raise ValueError(f"give exactly one of epochs={epochs} and max_tokens={max_tokens}")
    if epochs is not None and not (math.isfinite(epochs) and epochs > 0):
        raise ValueError(f"epochs={epochs} must be finite and > 0")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be >= 1")
    if warmup_steps is not None and warmup_ratio is not None:
        raise ValueError(
            f"give at most one of warmup_steps={warmup_steps} and warmup_ratio={warmup_ratio}"
        )
    if warmup_steps is not None and warmup_steps < 0:
        raise ValueError(f"warmup_steps={warmup_steps} must be >= 0")
    if warmup_ratio is not None and not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio={warmup_ratio} must be in [0, 1)")
    if not 0 <= lr_decay_ratio <= 1:
        raise ValueError(f"lr_decay_ratio={lr_decay_ratio} must be in [0, 1]")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip={grad_clip} must be > 0 (or None for no clipping)")
    if log_every < 1:
        raise ValueError(f"log_every={log_every} must be >= 1")
    if init_seeds is None:
        init_seeds = _default_init_seeds(seed, len(cfgs))
    elif len(init_seeds) != len(cfgs):
        raise ValueError(f"got {len(init_seeds)} init_seeds for {len(cfgs)} configs")

    total_tokens = max_tokens if max_tokens is not None else math.ceil(epochs * n)
    total_steps = max(1, math.ceil(total_tokens / batch_size))
    warmup = round(warmup_ratio * total_steps) if warmup_ratio is not None else warmup_steps or 0
    decay = round(lr_decay_ratio * total_steps)
    if batch_size > n:
        logger.warning("batch_size=%d > N=%d: a batch repeats rows", batch_size, n)
    device = torch.device(device)

    # Distinct dataset objects: each is read once per step however many SAEs use it.
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
    means = [
        _column_mean(ds, f"datasets[{slot_of.index(j)}]", check_data) for j, ds in enumerate(unique)
    ]

    # Stack SAEs that share (d_in, d_sae, sparsity, k); different kinds train side by side.
    if stack is None:
        stack = device.type == "cuda"
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(cfgs):
        key = (c.d_in, c.d_sae, c.sparsity, c.k if c.sparsity == "topk" else 0)
        key = key if stack else (i,)
        groups.setdefault(key, []).append(i)
    members = list(groups.values())
    stacks: list[_SAEStack] = []
    for g in members:
        b_dec = torch.stack([torch.from_numpy(means[slot_of[i]] * cfgs[i].scale_factor) for i in g])
        stacks.append(
            _SAEStack([cfgs[i] for i in g], [int(init_seeds[i]) for i in g], b_dec).to(device)
        )
    optimizer = torch.optim.Adam(
        [p for s in stacks for p in s.parameters()], lr=lr, betas=adam_betas
    )
    logger.info(
        "training %d SAE(s) in %d stack(s): N=%d rows, %d steps of %d tokens, lr=%g, warmup=%d",
        len(cfgs),
        len(stacks),
        n,
        total_steps,
        batch_size,
        lr,
        warmup,
    )

    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    curve: list[dict[str, float]] = []
    window = [torch.zeros(5, len(g), device=device) for g in members]
    window_steps = 0
    t0 = time.perf_counter()
    bar = tqdm(total=total_steps, desc="SAE training", unit="step", disable=not progress)
    try:
        for step, idx_B in enumerate(_batch_indices(n, batch_size, total_steps, rng)):
            lr_now = lr * _lr_factor(step, total_steps, warmup, decay)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            rows = [_read_rows(ds, idx_B) for ds in unique]
            optimizer.zero_grad(set_to_none=True)
            for gi, (g, sae_stack) in enumerate(zip(members, stacks, strict=True)):
                if len(g) == 1:
                    x_SBD = rows[slot_of[g[0]]].unsqueeze(0)
                else:
                    x_SBD = torch.stack([rows[slot_of[i]] for i in g])
                with torch.autocast(
                    torch.device(device).type,
                    dtype=autocast_dtype or torch.bfloat16,
                    enabled=autocast_dtype is not None,
                ):
                    loss_S, metrics = sae_stack(x_SBD.to(device, non_blocking=True))
                loss_S.float().sum().backward()
                window[gi] += metrics
                _remove_parallel_grad(sae_stack.W_dec)
                if grad_clip is not None:
                    sae_stack.clip_grad_norm_(grad_clip)
            optimizer.step()
            for sae_stack in stacks:
                _normalize_rows(sae_stack.W_dec)
            window_steps += 1
            bar.update(1)

            if window_steps == log_every or step + 1 == total_steps:
                logged = _curve_rows(step + 1, lr_now, members, window, window_steps, len(cfgs))
                curve.extend(logged)
                window = [torch.zeros_like(w) for w in window]
                window_steps = 0
                if not all(math.isfinite(r["loss"]) for r in logged):
                    bad = [r["sae"] for r in logged if not math.isfinite(r["loss"])]
                    raise FloatingPointError(
                        f"non-finite SAE loss at step {step + 1} for SAE(s) {bad}: lower lr?"
                    )
                bar.set_postfix(loss=f"{np.mean([r['loss'] for r in logged]):.4g}")
                logger.debug("step %d: %s", step + 1, logged)
                if on_log is not None:
                    on_log(step + 1, logged)
    finally:
        bar.close()
    logger.info(
        "trained %d SAE(s) for %d steps in %.1f s", len(cfgs), total_steps, time.perf_counter() - t0
    )

    saes: list[SparseAutoencoder | None] = [None] * len(cfgs)
    for g, sae_stack in zip(members, stacks, strict=True):
        for i, sae in zip(g, sae_stack.to_saes(), strict=True):
            saes[i] = sae.eval()
    return saes, curve  # type: ignore[return-value]


def _curve_rows(
    step: int,
    lr: float,
    members: list[list[int]],
    window: list[torch.Tensor],
    window_steps: int,
    n_saes: int,
) -> list[dict[str, float]]:
    rows: list[dict[str, float] | None] = [None] * n_saes
    for g, w in zip(members, window, strict=True):
        vals = (w / window_steps).tolist()
        for j, i in enumerate(g):
            loss, mse, sparsity, l0, fvu = (vals[m][j] for m in range(5))
            rows[i] = {
                "step": step,
                "sae": i,
                "loss": loss,
                "mse_loss": mse,
                "sparsity_loss": sparsity,
                "l0": l0,
                "fvu": fvu,
                "lr": lr,
            }
    return rows  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


class SAEEvaluation(NamedTuple):
    """Metrics and per-feature firing frequencies from one pass over an eval set."""

    metrics: dict[str, float]
    """Keys :data:`EVAL_METRIC_KEYS`, all in raw (unscaled) activation space."""
    feature_freq: np.ndarray
    """``[F]`` float64: fraction of eval tokens on which each feature is > 0."""


@torch.no_grad()
def evaluate_sae_detailed(
    sae: SparseAutoencoder,
    acts: ArrayLike,
    *,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
    dense_threshold: float = 0.1,
) -> SAEEvaluation:
    """Evaluate ``sae`` on every row of ``acts`` in one streaming pass, in raw space.

    Sums are accumulated in float64 over the whole set, and the variance in the explained
    variance is about the *eval-set* mean, merged across chunks with Chan's update (exact, no
    ``E[x^2] - E[x]^2`` cancellation on BERT's large-mean outlier dims). Averaging a per-batch
    ratio instead is the bug SAELens shipped twice.

    Metrics: ``mse`` (mean over tokens and dims of the squared error); ``explained_variance``
    ``= 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``; ``fvu = 1 - explained_variance``;
    ``l0`` (mean active features per token); ``dead_frac`` (features that never fire);
    ``dense_frac`` (features firing on more than ``dense_threshold`` of tokens); ``cos_sim``
    (mean cosine between x and x_hat).
    """
    n, d = _shape2d(acts, "acts")
    if d != sae.cfg.d_in:
        raise ValueError(f"acts has D={d} but the SAE's d_in={sae.cfg.d_in}")
    if n == 0:
        raise ValueError("cannot evaluate an SAE on an empty activation array (N=0)")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    sae = _on_device(sae, device)
    dev = sae.device

    sse = 0.0
    cos_sum = 0.0
    l0_sum = 0.0
    count_F = torch.zeros(sae.cfg.d_sae, dtype=torch.int64, device=dev)
    n_seen = 0
    mean_D = torch.zeros(d, dtype=torch.float64, device=dev)
    m2_D = torch.zeros(d, dtype=torch.float64, device=dev)
    for start in range(0, n, batch_size):
        chunk = _rows_numpy(acts, start, min(start + batch_size, n))
        _raise_nonfinite(chunk, start, "acts")
        x_BD = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)).to(dev)
        z_BF = sae.encode(x_BD)
        x_hat_BD = sae.decode(z_BF)
        sse += float((x_hat_BD - x_BD).pow(2).sum(-1).double().sum())
        cos_sum += float(cosine_similarity(x_hat_BD, x_BD, dim=-1).double().sum())
        fires_BF = z_BF > 0
        count_F += fires_BF.sum(0)
        l0_sum += float(fires_BF.sum(-1).double().sum())
        # Chan et al.'s parallel update of the per-dim mean and sum of squared deviations.
        x64 = x_BD.double()
        nb = x64.shape[0]
        mean_b = x64.mean(0)
        m2_b = (x64 - mean_b).pow(2).sum(0)
        delta = mean_b - mean_D
        total = n_seen + nb
        mean_D += delta * (nb / total)
        m2_D += m2_b + delta.pow(2) * (n_seen * nb / total)
        n_seen = total

    total_var = float(m2_D.sum())
    if total_var > 0:
        explained_variance = 1.0 - sse / total_var
    else:
        logger.warning("eval activations have zero variance: explained variance is undefined")
        explained_variance = float("nan")
    freq_F = count_F.double().cpu().numpy() / n
    metrics = {
        "mse": sse / (n * d),
        "explained_variance": explained_variance,
        "fvu": 1.0 - explained_variance,
        "l0": l0_sum / n,
        "dead_frac": float(np.mean(freq_F == 0)),
        "dense_frac": float(np.mean(freq_F > dense_threshold)),
        "cos_sim": cos_sum / n,
    }
    return SAEEvaluation(metrics, freq_F)


def evaluate_sae(
    sae: SparseAutoencoder,
    acts: ArrayLike,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
    dense_threshold: float = 0.1,
) -> dict[str, float]:
    """Raw-space metrics of ``sae`` on ``acts`` (keys :data:`EVAL_METRIC_KEYS`); see
    :func:`evaluate_sae_detailed`, which also returns per-feature firing frequencies."""
    return evaluate_sae_detailed(
        sae, acts, batch_size=batch_size, device=device, dense_threshold=dense_threshold
    ).metrics


def feature_frequencies(
    sae: SparseAutoencoder,
    acts: ArrayLike,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """``[F]`` fraction of rows of ``acts`` on which each feature fires (> 0)."""
    return evaluate_sae_detailed(sae, acts, batch_size=batch_size, device=device).feature_freq


# --------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------


def _cfg_json(sae: SparseAutoencoder, extra: dict[str, Any] | None) -> str:
    from layerwise import __version__
    from layerwise.io import to_jsonable

    data: dict[str, Any] = asdict(sae.cfg)
    data.update(
        format=FORMAT_VERSION,
        layerwise_version=__version__,
        dtype="float32",
        activation_scaling=(
            "encode multiplies raw activations by scale_factor; decode divides by it; "
            "losses are in scaled space, evaluation metrics in raw space"
        ),
    )
    for key, value in (extra or {}).items():
        if key in data:
            raise ValueError(f"extra key {key!r} would overwrite the SAE's own cfg.json field")
        data[key] = value
    try:
        return json.dumps(to_jsonable(data), indent=2, sort_keys=True) + "\n"
    except TypeError as exc:
        raise ValueError(f"SAE metadata/extra is not JSON-serialisable: {exc}") from exc


def save_sae(
    sae: SparseAutoencoder, directory: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``directory/sae_weights.safetensors`` and ``directory/cfg.json`` atomically.

    Everything is written into a temp sibling of ``directory`` and renamed into place, so a kill
    leaves the previous directory (or none), never a half-written one; an existing directory is
    replaced. ``cfg.json`` holds the config (incl. ``scale_factor`` and ``metadata``), the format
    and package version, and the keys of ``extra`` (e.g. training metrics), which must not clash
    with the config's own keys.

    Returns:
        The directory path.
    """
    from safetensors.torch import save_file

    from layerwise.io import atomic_dir

    directory = Path(directory)
    cfg_text = _cfg_json(sae, extra)  # fail on bad metadata before touching the disk
    tensors = {
        name: p.detach().to("cpu", torch.float32).contiguous()
        for name, p in sae.state_dict().items()
    }
    with atomic_dir(directory) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILENAME), metadata={"format": "pt"})
        (tmp / CFG_FILENAME).write_text(cfg_text)
    logger.info("saved SAE %s to %s", sae.extra_repr(), directory)
    return directory


def load_sae(directory: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load an SAE written by :func:`save_sae` (extra ``cfg.json`` keys are ignored here; read the
    JSON for them)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, weights_path = directory / CFG_FILENAME, directory / WEIGHTS_FILENAME
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not an SAE directory written by save_sae")
    data = json.loads(cfg_path.read_text())
    cfg = SAEConfig(**{f.name: data[f.name] for f in fields(SAEConfig) if f.name in data})
    tensors = load_file(str(weights_path), device="cpu")
    try:
        sae = SparseAutoencoder.from_weights(
            cfg, tensors["W_enc"], tensors["b_enc"], tensors["W_dec"], tensors["b_dec"]
        )
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"{weights_path} does not match {cfg_path}: {exc}") from exc
    return sae.to(device).eval()
