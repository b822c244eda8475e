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
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from layerwise.sae._arrays import ArrayLike, raise_nonfinite, read_rows, rows_numpy, shape2d
from layerwise.sae.batch_topk import batch_topk, threshold_select
from layerwise.sae.evaluate import _Sums
from layerwise.sae.model import (
    _decode_scaled,
    _pre_acts,
    init_decoder,
    normalize_rows,
    on_device,
)
from layerwise.sae.train import TrainConfig, _batch_indices, _column_mean, _lr_factor

logger = logging.getLogger(__name__)

SIDES = ("pt", "ft")
"""The two models, in the order of the weights' model axis."""
SPARSITY_KINDS = ("batchtopk", "l1")
"""Allowed values of ``CrosscoderConfig.sparsity``."""
LATENT_CLASSES = ("pt_only", "shared", "ft_only")
"""What :func:`classify_latents` returns, by relative norm low to high."""
CURVE_COLUMNS = ("step", "loss", "mse_loss", "sparsity_loss", "l0", "fvu_pt", "fvu_ft", "lr")
"""One training-curve row (averages over the steps since the previous row; FVU in scaled
space, on the batch)."""

WEIGHTS_FILENAME = "weights.safetensors"
CFG_FILENAME = "cfg.json"
FORMAT_VERSION = "layerwise-crosscoder-1"

OnLog = Callable[[int, dict[str, float]], None]
"""``on_log(step, row)`` with one curve row (keys :data:`CURVE_COLUMNS`)."""


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
        return _unscale(_decode_scaled(latent_acts, self.W_dec, self.b_dec), self.cfg)

    def forward(
        self, x_pt_raw: torch.Tensor, x_ft_raw: torch.Tensor, *, use_threshold: bool = False
    ) -> CrosscoderOutput:
        """Reconstruct both models' raw rows; losses in scaled space, averaged over tokens.
        ``use_threshold=False`` (the training objective) ranks latents across the batch."""
        out = crosscoder_forward(self, self.scale(x_pt_raw, x_ft_raw), use_threshold=use_threshold)
        x_hat_pt, x_hat_ft = _unscale(out.x_hat, self.cfg)
        return CrosscoderOutput(
            x_hat_pt, x_hat_ft, out.latent_acts, out.loss, out.mse_loss, out.sparsity_loss
        )


def _side_index(side: str) -> int:
    if side not in SIDES:
        raise ValueError(f"side={side!r} must be one of {list(SIDES)}")
    return SIDES.index(side)


def _as_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"{name} must be [B, D] rows, got shape {tuple(x.shape)}")
    return x.float()


def _unscale(x_hat_BZ: torch.Tensor, cfg: CrosscoderConfig) -> tuple[torch.Tensor, torch.Tensor]:
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
# The trainer
# --------------------------------------------------------------------------------------------


def _paired_rows(cfg: CrosscoderConfig, acts_pt: ArrayLike, acts_ft: ArrayLike) -> int:
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
        self.n = _paired_rows(cfg, acts_pt, acts_ft)
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
    n = _paired_rows(cc.cfg, acts_pt, acts_ft)
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


# --------------------------------------------------------------------------------------------
# Analysis: decoder norms, classes, Latent Scaling, quality per model
# --------------------------------------------------------------------------------------------


def decoder_norms(cc: Crosscoder) -> np.ndarray:
    """``[F, 2]`` float64 L2 norm of each latent's decoder row per model (columns
    :data:`SIDES`), in the scaled space both models were trained in."""
    return cc.decoders().detach().double().norm(dim=-1).cpu().numpy()


def relative_norms(cc: Crosscoder) -> np.ndarray:
    """``[F]`` relative decoder norm ``r = |d_FT| / (|d_PT| + |d_FT|)``: 0 for a latent only
    the PT model uses, 1 for FT-only, 0.5 for one used alike (and for an all-zero latent, which
    says nothing either way)."""
    norms = decoder_norms(cc)
    total = norms.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, norms[:, 1] / total, 0.5)


def classify_latents(
    relative: np.ndarray, *, pt_only_below: float = 0.1, ft_only_above: float = 0.9
) -> np.ndarray:
    """``[F]`` class of each latent by relative norm: ``"pt_only"`` (r < ``pt_only_below``),
    ``"ft_only"`` (r > ``ft_only_above``), else ``"shared"`` (see :data:`LATENT_CLASSES`)."""
    if not 0 <= pt_only_below < ft_only_above <= 1:
        raise ValueError(
            f"need 0 <= pt_only_below={pt_only_below} < ft_only_above={ft_only_above} <= 1"
        )
    relative = np.asarray(relative, dtype=np.float64)
    classes = np.full(relative.shape, "shared", dtype=object)
    classes[relative < pt_only_below] = "pt_only"
    classes[relative > ft_only_above] = "ft_only"
    return classes.astype(str)


class LatentScaling(NamedTuple):
    """Latent Scaling (Minder et al. 2025) of K latents said to live in model ``present`` only.

    For latent j with decoder row ``d`` in the present model and activations ``f_i`` over tokens
    i, each model m gets ``beta = sum_i f_i <d, y_i> / (|d|^2 sum_i f_i^2)``, the least-squares
    scale of ``f d`` that best explains a target ``y``: the *error* ``x_m - x_hat_m + f d_m``
    (what the crosscoder leaves unexplained in m once j's own contribution is removed) and the
    *reconstruction* ``x_hat_m - b_dec_m`` (what the latents carry; the decoder bias is left
    out, unlike Minder et al.'s code, because it is no latent, and with BERT's large-mean
    outlier dimensions its projection would swamp the latents'). The ratios absent / present
    are near 0 for a latent that truly exists in one model only; a large error ratio means the
    absent model holds the direction but the decoder dropped it (Complete Shrinkage), a large
    reconstruction ratio that other latents represent it there (Latent Decoupling).
    """

    latents: np.ndarray
    """``[K]`` latent indices."""
    present: str
    """The model the latents are said to live in (``"pt"`` or ``"ft"``)."""
    beta_error: np.ndarray
    """``[K, 2]`` beta of the error target per model (columns :data:`SIDES`)."""
    beta_reconstruction: np.ndarray
    """``[K, 2]`` beta of the reconstruction target per model."""
    ratio_error: np.ndarray
    """``[K]`` ``nu_error``: absent model's error beta / present model's."""
    ratio_reconstruction: np.ndarray
    """``[K]`` ``nu_reconstruction``: the same for the reconstruction betas."""
    n_active: np.ndarray
    """``[K]`` tokens on which the latent fired (betas are NaN where 0)."""


class _ScalingSums:
    """Float64 sums over tokens for :func:`latent_scaling`: per model ``(x - b_dec)^T f`` and
    ``(x_hat - b_dec)^T f`` (``[2, D, K]``), and ``sum f^2``, firing counts (``[K]``)."""

    def __init__(self, d_in: int, n_latents: int, device: torch.device) -> None:
        kw = {"dtype": torch.float64, "device": device}
        self.x_f = torch.zeros(2, d_in, n_latents, **kw)
        self.x_hat_f = torch.zeros(2, d_in, n_latents, **kw)
        self.f_sq = torch.zeros(n_latents, **kw)
        self.n_active = torch.zeros(n_latents, **kw)

    def add(
        self, x_BZ: torch.Tensor, out: CrosscoderPass, latents: torch.Tensor, b_dec_Z: torch.Tensor
    ) -> None:
        f_BK = out.latent_acts[:, latents]
        n_rows = x_BZ.shape[0]
        for total, rows_BZ in ((self.x_f, x_BZ), (self.x_hat_f, out.x_hat)):
            centred_BMD = (rows_BZ - b_dec_Z).view(n_rows, 2, -1)
            total += torch.einsum("bmd,bk->mdk", centred_BMD, f_BK).double()
        self.f_sq += f_BK.double().pow(2).sum(0)
        self.n_active += (f_BK > 0).sum(0).double()


@torch.no_grad()
def latent_scaling(
    cc: Crosscoder,
    acts_pt: ArrayLike,
    acts_ft: ArrayLike,
    latents: np.ndarray,
    *,
    present: str = "ft",
    batch_size: int = 4096,
    device: str | torch.device | None = None,
) -> LatentScaling:
    """Latent Scaling of ``latents`` (said to live in model ``present`` only) over every paired
    row of ``acts_pt`` / ``acts_ft``, in one streaming pass, in scaled space; see
    :class:`LatentScaling`. The betas use the latents' decoder rows in the present model and
    their inference-time activations."""
    n = _paired_rows(cc.cfg, acts_pt, acts_ft)
    p = _side_index(present)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    cc = on_device(cc, device)
    idx_K = torch.as_tensor(np.asarray(latents, dtype=np.int64), device=cc.device)
    sums = _ScalingSums(cc.cfg.d_in, len(idx_K), cc.device)
    for start in range(0, n, batch_size):
        x_BZ = cc.scale(*_checked_rows(acts_pt, acts_ft, start, min(start + batch_size, n)))
        sums.add(x_BZ, crosscoder_forward(cc, x_BZ, use_threshold=True), idx_K, cc.b_dec)
    W_dec_K2D = cc.decoders()[idx_K].double()
    d_KD = W_dec_K2D[:, p]
    denom_K = d_KD.pow(2).sum(-1) * sums.f_sq
    proj_x_K2 = torch.einsum("mdk,kd->km", sums.x_f, d_KD)
    proj_rec_K2 = torch.einsum("mdk,kd->km", sums.x_hat_f, d_KD)
    own_K2 = torch.einsum("kmd,kd->km", W_dec_K2D, d_KD) * sums.f_sq[:, None]
    beta_err = ((proj_x_K2 - proj_rec_K2 + own_K2) / denom_K[:, None]).cpu().numpy()
    beta_rec = (proj_rec_K2 / denom_K[:, None]).cpu().numpy()
    a = 1 - p
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio_err = beta_err[:, a] / beta_err[:, p]
        ratio_rec = beta_rec[:, a] / beta_rec[:, p]
    return LatentScaling(
        np.asarray(latents, dtype=np.int64),
        present,
        beta_err,
        beta_rec,
        ratio_err,
        ratio_rec,
        sums.n_active.cpu().numpy().astype(np.int64),
    )


def flag_artefacts(scaling: LatentScaling, *, max_ratio: float = 0.3) -> np.ndarray:
    """``[K]`` True where a latent's "only" is not confirmed: its error or reconstruction ratio
    is above ``max_ratio`` (the absent model carries the latent's direction after all), or it
    never fired on the data (no evidence)."""
    if not (math.isfinite(max_ratio) and max_ratio > 0):
        raise ValueError(f"max_ratio={max_ratio} must be finite and > 0")
    ratios = np.stack([scaling.ratio_error, scaling.ratio_reconstruction])
    confirmed = np.isfinite(ratios).all(0) & (np.abs(ratios) <= max_ratio).all(0)
    return ~confirmed


def _checked_rows(
    acts_pt: ArrayLike, acts_ft: ArrayLike, start: int, stop: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw rows ``start:stop`` of both stores as float32 CPU tensors, checked finite."""
    chunks = []
    for acts, side in zip((acts_pt, acts_ft), SIDES, strict=True):
        chunk = rows_numpy(acts, start, stop)
        raise_nonfinite(chunk, start, f"acts_{side}")
        chunks.append(torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)))
    return chunks[0], chunks[1]


class CrosscoderEvaluation(NamedTuple):
    """Per-model quality and per-latent firing frequencies from one pass over an eval set."""

    metrics: dict[str, dict[str, float]]
    """Per model (keys :data:`SIDES`): ``schema.SAE_METRIC_KEYS``, raw space. ``l0``,
    ``dead_frac`` and ``dense_frac`` count the shared latents, so they agree across models."""
    latent_freq: np.ndarray
    """``[F]`` float64 fraction of eval tokens on which each latent fires."""


@torch.no_grad()
def evaluate_crosscoder(
    cc: Crosscoder,
    acts_pt: ArrayLike,
    acts_ft: ArrayLike,
    *,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
    dense_threshold: float = 0.1,
) -> CrosscoderEvaluation:
    """Raw-space FVU, MSE, cosine, L0, dead and dense fractions of each model's reconstruction,
    by the SAE definitions (:func:`layerwise.sae.evaluate.evaluate_sae_detailed`: float64 sums
    over the whole set, variance about the set's own mean), with inference-time latents."""
    n = _paired_rows(cc.cfg, acts_pt, acts_ft)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    cc = on_device(cc, device)
    d, f = cc.cfg.d_in, cc.cfg.d_latent
    sums = [_Sums(d, f, cc.device) for _ in SIDES]
    for start in range(0, n, batch_size):
        rows = _checked_rows(acts_pt, acts_ft, start, min(start + batch_size, n))
        out = crosscoder_forward(cc, cc.scale(*rows), use_threshold=True)
        for side_sums, x, x_hat in zip(sums, rows, _unscale(out.x_hat, cc.cfg), strict=True):
            side_sums.add(x.to(cc.device), out.latent_acts, x_hat)
    results = [s.result(n, d, dense_threshold) for s in sums]
    metrics = {side: r.metrics for side, r in zip(SIDES, results, strict=True)}
    return CrosscoderEvaluation(metrics, results[0].feature_freq)
