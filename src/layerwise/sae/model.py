"""The sparse autoencoder: its config, its one forward pass, and its directory format.

An SAE maps a token activation ``x`` (one row of a ``[N, D]`` activation store) to nonnegative
feature activations ``z = act((s * x - b_dec) @ W_enc + b_enc)`` and back to
``x_hat = (z @ W_dec + b_dec) / s``, where ``s`` is ``SAEConfig.scale_factor``.

Conventions:

* **Scaling.** ``s`` is estimated so that scaled activations have mean L2 norm ``sqrt(D)``
  (``layerwise.sae.train.estimate_scale_factor``, the SAELens convention), which makes one
  ``l1_coefficient`` and one learning rate work across layers and models whose activation norms
  differ by 10x. Training and the losses in :class:`SAEOutput` live in scaled space (that is what
  is optimised); the public API (``encode`` takes raw activations, ``decode`` returns raw
  activations) and every evaluation metric live in raw space, so numbers compare across scale
  factors. :meth:`SparseAutoencoder.fold_scale_factor` rewrites the weights so that ``s = 1``.
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
  ``b_enc = 0``; the trainer sets ``b_dec`` to the mean of the (scaled) training data.
* **One forward.** :func:`scaled_forward` is the only encode-decode-loss computation: the
  module's ``forward`` and the trainer (which stacks several SAEs into ``[S, D, F]`` weights)
  both call it, and ``encode``/``decode`` use the same helpers it does.

Shapes are suffixed in names: ``B`` batch, ``D`` model width (``d_in``), ``F`` features
(``d_sae``), ``S`` SAEs in a stack.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

SPARSITY_KINDS = ("l1", "topk")
"""Allowed values of ``SAEConfig.sparsity``."""

WEIGHTS_FILENAME = "sae_weights.safetensors"
CFG_FILENAME = "cfg.json"
FORMAT_VERSION = "layerwise-sae-1"


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
    divided by it). 1.0 means no scaling."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form description written to ``cfg.json`` (model, task, layer, PT/FT, ...). Must be
    JSON-serialisable to be saved, and stable: it is part of a content-hashed output."""

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
# The maths, for one SAE (W_enc [D, F], b_enc [F], x [..., D]) or a stack of S SAEs (W_enc
# [S, D, F], b_enc [S, 1, F], x [S, B, D]), where batched matmuls do the work.
# --------------------------------------------------------------------------------------------


class SAEWeights(Protocol):
    """What :func:`scaled_forward` reads: one SAE's parameters, or S SAEs' stacked."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor


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


def _tokens(t: torch.Tensor, n_stack_dims: int) -> torch.Tensor:
    """``t`` with every token axis flattened into one: ``[*stack, tokens, last]``."""
    return t.reshape(*t.shape[:n_stack_dims], -1, t.shape[-1])


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


class ScaledPass(NamedTuple):
    """One forward pass in scaled space, with what the trainer logs besides the losses."""

    x_hat: torch.Tensor
    """Scaled-space reconstruction, the input's shape."""
    feature_acts: torch.Tensor
    """Feature activations ``[..., F]`` (nonnegative)."""
    loss: torch.Tensor
    """``mse_loss + l1_coefficient * sparsity_loss``: a scalar, or ``[S]`` for a stack."""
    mse_loss: torch.Tensor
    """Squared error summed over dims, mean over tokens."""
    sparsity_loss: torch.Tensor
    """Sum of feature activations, mean over tokens (0 for topk)."""
    sq_err: torch.Tensor
    """Per-token squared error summed over dims: ``[tokens]``, or ``[S, B]`` for a stack."""


def scaled_forward(
    weights: SAEWeights,
    x_scaled: torch.Tensor,
    *,
    sparsity: str,
    k: int,
    l1_coefficient: float | torch.Tensor,
) -> ScaledPass:
    """Encode, decode and the losses of already scaled activations: the one forward pass.

    ``weights`` holds one SAE (``W_enc [D, F]``, ``x_scaled [..., D]``) or S stacked SAEs
    (``W_enc [S, D, F]``, ``x_scaled [S, B, D]``, ``l1_coefficient`` a ``[S]`` tensor); losses
    are averaged over every token axis and kept apart per stacked SAE.
    """
    z = _activate(_pre_acts(x_scaled, weights.W_enc, weights.b_enc, weights.b_dec), sparsity, k)
    x_hat = _decode_scaled(z, weights.W_dec, weights.b_dec)
    n_stack = weights.W_enc.dim() - 2
    mse, sparsity_loss, sq_err = _losses(
        _tokens(x_scaled, n_stack), _tokens(x_hat, n_stack), _tokens(z, n_stack), sparsity
    )
    return ScaledPass(x_hat, z, mse + l1_coefficient * sparsity_loss, mse, sparsity_loss, sq_err)


@torch.no_grad()
def remove_parallel_grad(W_dec: torch.Tensor) -> None:
    """Project out the gradient component along each (unit) decoder row, in place."""
    if W_dec.grad is None:
        return
    parallel = (W_dec.grad * W_dec).sum(-1, keepdim=True)
    W_dec.grad.sub_(parallel * W_dec)


@torch.no_grad()
def normalize_rows(W_dec: torch.Tensor) -> None:
    """Rescale every decoder row to unit L2 norm, in place."""
    W_dec.div_(W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def init_decoder(d_in: int, d_sae: int, seed: int) -> torch.Tensor:
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
        seed: seed of the random decoder directions (transpose init; ``b_dec`` starts at 0).
    """

    def __init__(self, cfg: SAEConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        W_dec_FD = init_decoder(cfg.d_in, cfg.d_sae, seed)
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
        c = self.cfg
        out = scaled_forward(
            self, self._scale(x_raw), sparsity=c.sparsity, k=c.k, l1_coefficient=c.l1_coefficient
        )
        x_hat = out.x_hat / c.scale_factor
        return SAEOutput(x_hat, out.feature_acts, out.loss, out.mse_loss, out.sparsity_loss)

    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Call after ``backward()``, before ``optimizer.step()``: a step along a decoder row only
        changes its norm, which the renormalisation would undo (and Adam would keep pushing)."""
        remove_parallel_grad(self.W_dec)

    def set_decoder_norm_to_unit_norm(self) -> None:
        """Call after ``optimizer.step()``: rescale every decoder row to unit L2 norm."""
        normalize_rows(self.W_dec)

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


def _resolved(device: str | torch.device) -> torch.device:
    """``device`` with its index: a bare ``cuda`` names the current CUDA device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def on_device(sae: SparseAutoencoder, device: str | torch.device | None) -> SparseAutoencoder:
    """``sae`` itself if already on ``device`` (None: where it is), else a copy there: ``.to`` is
    in place for modules, and evaluating on another device must not move the caller's SAE."""
    if device is None or _resolved(device) == _resolved(sae.device):
        return sae
    return copy.deepcopy(sae).to(device)


def numpy_encoder(
    sae: SparseAutoencoder, device: str | torch.device | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy ``[n, D] -> float32 [n, F]`` encode callable (what the features statistics
    take)."""
    sae = on_device(sae, device)

    @torch.no_grad()
    def encode(x: np.ndarray) -> np.ndarray:
        x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(sae.device)
        return sae.encode(x_t).cpu().numpy()

    return encode


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
    with the config's own keys. Keep commits, dates and hosts out of both: the directory is a
    content-hashed output, and they belong to the run's tracking tags.

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
