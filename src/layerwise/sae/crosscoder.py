"""Crosscoders for model diffing: one sparse dictionary over the pre-trained (PT) and fine-tuned
(FT) model's activations of the same tokens, with one decoder per model (Lindsey et al. 2024,
"Sparse crosscoders for cross-layer features and model diffing"; Minder et al. 2025,
"Robustly identifying concepts introduced during chat fine-tuning using crosscoders").

A crosscoder reads the concatenated row ``[s_PT * x_PT; s_FT * x_FT]`` of one token with one
encoder, so both models share one latent code ``z``, and writes each model back with its own
decoder: ``x_hat_m = (z @ W_dec_m + b_dec_m) / s_m``. A latent whose FT decoder row is long and
whose PT row is near zero is one that only the FT model's activations need: the relative norm
``r = |d_FT| / (|d_PT| + |d_FT|)`` classes latents as PT-only (r near 0), shared (near 0.5) or
FT-only (near 1), and Latent Scaling checks that an "only" is not an artefact of the sparsity
penalty.

Conventions:

* **Sparsity.** ``batchtopk`` (default, Minder et al.): keep the ``k * B`` largest scores
  ``z_j * (|d_PT,j| + |d_FT,j|)`` of a batch, and at inference a fixed threshold on that score
  (:mod:`layerwise.sae.batch_topk`). ``l1`` (Lindsey et al.): ReLU latents and the penalty
  ``l1_coefficient * sum_j z_j * (|d_PT,j| + |d_FT,j|)``. In both, decoder norms are free (no
  unit-norm projection): they carry the model-diffing signal, and the sum of norms in the score
  or penalty stops the decoder from absorbing a latent's scale.
* **Scaling.** Each model has its own scale factor ``s_m`` (estimate it with
  :func:`layerwise.sae.train.estimate_scale_factor`: mean row norm ``sqrt(D)`` per model), so
  both models weigh alike in the loss whatever their raw norms. Training, the losses, decoder
  norms and Latent Scaling live in that scaled space (so ``r = 0.5`` means "as large a share of
  each model's typical activation"); ``encode`` takes and ``decode`` returns raw activations, and
  the quality metrics are raw-space, per model, by the SAE definitions.
* **Layout.** ``W_enc [2D, F]``, ``b_enc [F]``, ``W_dec [F, 2D]``, ``b_dec [2D]``: the first D
  of the 2D are PT, the last D FT (:data:`SIDES`); :meth:`Crosscoder.decoders` views ``W_dec``
  as ``[F, 2, D]``, one decoder per model. Flat parameters make a step the same two big matmuls
  (and their backward) as an SAE on the concatenated rows, with the ``b_dec`` shift folded into
  the encoder bias as the SAEs do (:func:`layerwise.sae.model._pre_acts`); and being leaves,
  autocast casts each to bfloat16 once per step, not once per use.
* **Initialisation.** Decoder rows are random with per-model norm ``init_decoder_norm`` (default
  ``1/sqrt(2)``: each concatenated row has unit norm), ``W_enc`` is their transpose, ``b_enc = 0``;
  the trainer sets ``b_dec`` to each model's mean scaled activation.

Shapes are suffixed in names: ``B`` batch, ``D`` model width, ``Z`` = ``2D``, ``F`` latents, ``K``
latents under study.

This module holds the config, the forward pass, the module and save/load; training lives in
:mod:`layerwise.sae.crosscoder_train`, the model-diffing readout in
:mod:`layerwise.sae.crosscoder_analysis`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from layerwise.sae._arrays import ArrayLike, shape2d
from layerwise.sae.batch_topk import batch_topk, threshold_select
from layerwise.sae.model import _decode_scaled, _pre_acts, init_decoder, normalize_rows

logger = logging.getLogger(__name__)

SIDES = ("pt", "ft")
"""The two models, in the order of the weights' model axis."""
SPARSITY_KINDS = ("batchtopk", "l1")
"""Allowed values of ``CrosscoderConfig.sparsity``."""

WEIGHTS_FILENAME = "weights.safetensors"
CFG_FILENAME = "cfg.json"
FORMAT_VERSION = "layerwise-crosscoder-1"


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def _number(name: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (int or float), refusing bools and non-numbers, naming the field."""
    allowed = (int, np.integer) if kind is int else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise ValueError(
            f"crosscoder.{name}={value!r} must be {'an integer' if kind is int else 'a number'}"
        )
    return kind(value)


@dataclass
class CrosscoderConfig:
    """Architecture, sparsity and per-model activation scaling of one crosscoder (saved as
    ``cfg.json``)."""

    d_in: int
    """Width D of each model's activations (both models share it)."""
    d_latent: int
    """Number of latents F (one dictionary for both models)."""
    sparsity: str = "batchtopk"
    """``"batchtopk"``: keep the ``k * B`` best scores of a batch (threshold at inference), loss
    = mse only. ``"l1"``: ReLU latents, loss = mse + ``l1_coefficient`` * decoder-norm-weighted
    L1."""
    k: int = 32
    """Mean active latents per token for ``batchtopk`` (ignored by ``l1``)."""
    l1_coefficient: float = 1.0
    """Weight of the L1 penalty (``l1`` only); both loss terms are per-token sums, scaled space."""
    scale_factor_pt: float = 1.0
    """Raw PT activations are multiplied by this before encoding (reconstructions divided)."""
    scale_factor_ft: float = 1.0
    """The same for the FT model."""
    init_decoder_norm: float = math.sqrt(0.5)
    """L2 norm of each initial decoder row, per model."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form description written to ``cfg.json`` (model, task, layer, ...); JSON-serialisable
    and stable, as for the SAEs."""

    def __post_init__(self) -> None:
        for name in ("d_in", "d_latent", "k"):
            setattr(self, name, _number(name, getattr(self, name), int))
        for name in ("l1_coefficient", "scale_factor_pt", "scale_factor_ft", "init_decoder_norm"):
            setattr(self, name, _number(name, getattr(self, name), float))
        if self.d_in <= 0 or self.d_latent <= 0:
            raise ValueError(
                f"crosscoder.d_in={self.d_in} and d_latent={self.d_latent} must be > 0"
            )
        if self.sparsity not in SPARSITY_KINDS:
            raise ValueError(
                f"crosscoder.sparsity={self.sparsity!r} must be one of {list(SPARSITY_KINDS)}"
            )
        if self.sparsity == "batchtopk" and not 1 <= self.k <= self.d_latent:
            raise ValueError(
                f"crosscoder.k={self.k} must be between 1 and d_latent={self.d_latent}"
            )
        if not (math.isfinite(self.l1_coefficient) and self.l1_coefficient >= 0):
            raise ValueError(
                f"crosscoder.l1_coefficient={self.l1_coefficient} must be finite and >= 0"
            )
        for name in ("scale_factor_pt", "scale_factor_ft", "init_decoder_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"crosscoder.{name}={value} must be finite and > 0")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"crosscoder.metadata={self.metadata!r} must be a dict")

    @property
    def scale_factors(self) -> tuple[float, float]:
        """``(s_PT, s_FT)``, in :data:`SIDES` order."""
        return self.scale_factor_pt, self.scale_factor_ft


# --------------------------------------------------------------------------------------------
# The one forward pass (scaled space)
# --------------------------------------------------------------------------------------------


class CrosscoderPass(NamedTuple):
    """One forward pass in scaled space."""

    x_hat: torch.Tensor
    """Reconstruction ``[B, 2D]`` (PT then FT)."""
    latent_acts: torch.Tensor
    """Latent activations ``[B, F]`` (nonnegative)."""
    loss: torch.Tensor
    """``mse_loss + l1_coefficient * sparsity_loss``."""
    mse_loss: torch.Tensor
    """Squared error summed over both models' dims, mean over tokens."""
    sparsity_loss: torch.Tensor
    """Decoder-norm-weighted L1, mean over tokens (0 for batchtopk)."""
    sq_err: torch.Tensor
    """Per-token squared error per model ``[B, 2]``."""
    cutoff: torch.Tensor | None
    """The batch's BatchTopK cutoff score (training-mode batchtopk only)."""


def crosscoder_forward(
    cc: Crosscoder, x_scaled_BZ: torch.Tensor, *, use_threshold: bool
) -> CrosscoderPass:
    """Encode, decode and the losses of already scaled, concatenated rows ``[B, 2D]``.

    The only encode-decode-loss computation: the module's ``forward``, ``encode`` and the
    trainer all run it. ``use_threshold`` picks the batchtopk mode: the inference threshold
    (row by row) or the batch's top ``k * B`` (training).
    """
    cfg = cc.cfg
    acts_BF = _pre_acts(x_scaled_BZ, cc.W_enc, cc.b_enc, cc.b_dec).relu_()
    weight_F = cc.decoders().norm(dim=-1).sum(-1)
    cutoff = None
    if cfg.sparsity == "batchtopk" and use_threshold:
        acts_BF = threshold_select(acts_BF, weight_F.detach(), cc.inference_threshold())
    elif cfg.sparsity == "batchtopk":
        acts_BF, cutoff = batch_topk(acts_BF, weight_F, cfg.k)
    x_hat_BZ = _decode_scaled(acts_BF, cc.W_dec, cc.b_dec)
    n_rows = x_scaled_BZ.shape[0]
    sq_err_B2 = (x_hat_BZ - x_scaled_BZ).pow(2).view(n_rows, 2, cfg.d_in).sum(-1)
    mse = sq_err_B2.sum(-1).mean()
    if cfg.sparsity == "l1":
        sparsity_loss = (acts_BF @ weight_F.to(acts_BF.dtype)).mean()
    else:
        sparsity_loss = torch.zeros_like(mse)
    loss = mse + cfg.l1_coefficient * sparsity_loss
    return CrosscoderPass(x_hat_BZ, acts_BF, loss, mse, sparsity_loss, sq_err_B2, cutoff)


def _initial_decoder(cfg: CrosscoderConfig, seed: int) -> torch.Tensor:
    """Random decoder ``[F, 2, D]``, each model's rows at norm ``init_decoder_norm``."""
    W_dec_F2D = init_decoder(2 * cfg.d_in, cfg.d_latent, seed).view(cfg.d_latent, 2, cfg.d_in)
    normalize_rows(W_dec_F2D)
    return W_dec_F2D.mul_(cfg.init_decoder_norm)


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


class CrosscoderOutput(NamedTuple):
    """What :meth:`Crosscoder.forward` returns."""

    x_hat_pt: torch.Tensor
    """PT reconstruction ``[B, D]``, raw space."""
    x_hat_ft: torch.Tensor
    """FT reconstruction ``[B, D]``, raw space."""
    latent_acts: torch.Tensor
    """Latent activations ``[B, F]``."""
    loss: torch.Tensor
    """Scaled-space training loss."""
    mse_loss: torch.Tensor
    """Scaled-space squared error over both models, mean over tokens."""
    sparsity_loss: torch.Tensor
    """Decoder-norm-weighted L1, mean over tokens (0 for batchtopk)."""


class Crosscoder(nn.Module):
    """A BatchTopK (or L1) crosscoder over two models' activations at one layer.

    Parameters (float32): ``W_enc [2D, F]``, ``b_enc [F]``, ``W_dec [F, 2D]``, ``b_dec [2D]``
    (PT's D first, then FT's); buffer ``threshold`` (the batchtopk inference threshold on the score
    ``z_j * sum_m |d_m,j|``, NaN until a trainer estimates it).

    Args:
        cfg: architecture, sparsity and scale factors.
        seed: seed of the random initial decoder directions.
    """

    def __init__(self, cfg: CrosscoderConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        d, f = cfg.d_in, cfg.d_latent
        W_dec_FZ = _initial_decoder(cfg, seed).view(f, 2 * d)
        self.W_enc = nn.Parameter(W_dec_FZ.T.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(f))
        self.W_dec = nn.Parameter(W_dec_FZ)
        self.b_dec = nn.Parameter(torch.zeros(2 * d))
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.register_buffer(
            "scale_Z", torch.tensor(cfg.scale_factors).repeat_interleave(d), persistent=False
        )

    @classmethod
    def from_weights(cls, cfg: CrosscoderConfig, tensors: dict[str, torch.Tensor]) -> Crosscoder:
        """Build a crosscoder from given weights (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``,
        ``threshold``: copied, shapes checked against ``cfg``)."""
        cc = cls(cfg)
        cc.load_state_dict(tensors, strict=True)
        return cc

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def extra_repr(self) -> str:
        c = self.cfg
        extra = f"k={c.k}" if c.sparsity == "batchtopk" else f"l1_coefficient={c.l1_coefficient}"
        return (
            f"d_in={c.d_in}, d_latent={c.d_latent}, sparsity={c.sparsity}, {extra}, "
            f"scale_factors=({c.scale_factor_pt:.6g}, {c.scale_factor_ft:.6g})"
        )

    def decoders(self) -> torch.Tensor:
        """``W_dec`` viewed as ``[F, 2, D]``: each latent's decoder row per model (scaled
        space; a view, gradients flow)."""
        return self.W_dec.view(self.cfg.d_latent, 2, self.cfg.d_in)

    def inference_threshold(self) -> torch.Tensor:
        """The batchtopk threshold; fails if it was never estimated."""
        if torch.isnan(self.threshold):
            raise ValueError(
                "this batchtopk crosscoder has no inference threshold: train it with "
                "CrosscoderTrainer, or set `threshold`"
            )
        return self.threshold

    def scale(self, x_pt_raw: torch.Tensor, x_ft_raw: torch.Tensor) -> torch.Tensor:
        """Raw ``[B, D]`` rows of both models -> scaled, concatenated ``[B, 2D]`` rows."""
        x = torch.cat([_as_rows(x_pt_raw, "x_pt"), _as_rows(x_ft_raw, "x_ft")], dim=-1)
        return x.to(device=self.device, dtype=torch.float32) * self.scale_Z

    def encode(self, x_pt_raw: torch.Tensor, x_ft_raw: torch.Tensor) -> torch.Tensor:
        """Latent activations ``[B, F]`` of raw rows (batchtopk: the inference threshold, so
        each row's code does not depend on the rest of the batch)."""
        return crosscoder_forward(self, self.scale(x_pt_raw, x_ft_raw), use_threshold=True)[1]

    def decode(self, latent_acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw-space reconstructions ``(x_hat_pt, x_hat_ft)`` ``[B, D]`` of latents ``[B, F]``."""
        return unscale(_decode_scaled(latent_acts, self.W_dec, self.b_dec), self.cfg)

    def forward(
        self, x_pt_raw: torch.Tensor, x_ft_raw: torch.Tensor, *, use_threshold: bool = False
    ) -> CrosscoderOutput:
        """Reconstruct both models' raw rows; losses in scaled space, averaged over tokens.
        ``use_threshold=False`` (the training objective) ranks latents across the batch."""
        out = crosscoder_forward(self, self.scale(x_pt_raw, x_ft_raw), use_threshold=use_threshold)
        x_hat_pt, x_hat_ft = unscale(out.x_hat, self.cfg)
        return CrosscoderOutput(
            x_hat_pt, x_hat_ft, out.latent_acts, out.loss, out.mse_loss, out.sparsity_loss
        )


def _as_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"{name} must be [B, D] rows, got shape {tuple(x.shape)}")
    return x.float()


def unscale(x_hat_BZ: torch.Tensor, cfg: CrosscoderConfig) -> tuple[torch.Tensor, torch.Tensor]:
    x_pt, x_ft = x_hat_BZ.split(cfg.d_in, dim=-1)
    return x_pt / cfg.scale_factor_pt, x_ft / cfg.scale_factor_ft


# --------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------


def _cfg_json(cc: Crosscoder, extra: dict[str, Any] | None) -> str:
    from layerwise import __version__
    from layerwise.io import to_jsonable

    data: dict[str, Any] = asdict(cc.cfg)
    data.update(
        format=FORMAT_VERSION,
        layerwise_version=__version__,
        dtype="float32",
        sides=list(SIDES),
        layout="W_enc [2D, F], b_enc [F], W_dec [F, 2D], b_dec [2D]; 2D = D per side, in order",
        activation_scaling=(
            "encode multiplies each model's raw activations by its scale factor; decode divides "
            "by it; losses, decoder norms and latent scaling are in scaled space, evaluation "
            "metrics in raw space"
        ),
    )
    for key, value in (extra or {}).items():
        if key in data:
            raise ValueError(f"extra key {key!r} would overwrite the crosscoder's own field")
        data[key] = value
    try:
        return json.dumps(to_jsonable(data), indent=2, sort_keys=True) + "\n"
    except TypeError as exc:
        raise ValueError(f"crosscoder metadata/extra is not JSON-serialisable: {exc}") from exc


def save_crosscoder(
    cc: Crosscoder, directory: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``directory/weights.safetensors`` and ``directory/cfg.json`` atomically (a temp
    sibling renamed into place; an existing directory is replaced).

    ``cfg.json`` holds the config, the format, layout and package version, and the keys of
    ``extra`` (e.g. metrics), which must not clash with its own. No commits, dates or hosts: the
    directory is a content-hashed output.
    """
    from safetensors.torch import save_file

    from layerwise.io import atomic_dir

    directory = Path(directory)
    cfg_text = _cfg_json(cc, extra)
    tensors = {
        name: t.detach().to("cpu", torch.float32).contiguous()
        for name, t in cc.state_dict().items()
    }
    with atomic_dir(directory) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILENAME), metadata={"format": "pt"})
        (tmp / CFG_FILENAME).write_text(cfg_text)
    logger.info("saved crosscoder %s to %s", cc.extra_repr(), directory)
    return directory


def load_crosscoder(directory: str | Path, device: str | torch.device = "cpu") -> Crosscoder:
    """Load a crosscoder written by :func:`save_crosscoder` (in eval mode)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, weights_path = directory / CFG_FILENAME, directory / WEIGHTS_FILENAME
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a directory written by save_crosscoder")
    data = json.loads(cfg_path.read_text())
    if data.get("format") != FORMAT_VERSION:
        raise ValueError(f"{cfg_path} has format {data.get('format')!r}, not {FORMAT_VERSION!r}")
    cfg = CrosscoderConfig(
        **{f.name: data[f.name] for f in fields(CrosscoderConfig) if f.name in data}
    )
    try:
        cc = Crosscoder.from_weights(cfg, load_file(str(weights_path), device="cpu"))
    except RuntimeError as exc:
        raise ValueError(f"{weights_path} does not match {cfg_path}: {exc}") from exc
    return cc.to(device).eval()


# --------------------------------------------------------------------------------------------
# Paired stores (shared by training and analysis)
# --------------------------------------------------------------------------------------------


def paired_rows(cfg: CrosscoderConfig, acts_pt: ArrayLike, acts_ft: ArrayLike) -> int:
    """N, the token rows both stores share; fails naming what is off."""
    n_pt, d_pt = shape2d(acts_pt, "acts_pt")
    n_ft, d_ft = shape2d(acts_ft, "acts_ft")
    if n_pt != n_ft:
        raise ValueError(
            f"acts_pt has N={n_pt} rows but acts_ft has N={n_ft}: a crosscoder needs both "
            "models' activations of the same tokens, row by row"
        )
    if not d_pt == d_ft == cfg.d_in:
        raise ValueError(f"acts_pt has D={d_pt}, acts_ft D={d_ft}, but cfg.d_in={cfg.d_in}")
    if n_pt == 0:
        raise ValueError("acts_pt and acts_ft have N=0 rows: nothing to train on")
    return n_pt
