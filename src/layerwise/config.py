"""Typed, validated view of ``params.yaml``.

Every stage reads its settings through :func:`load_params`, so a typo or a bad value fails here,
at stage start, with one message naming the key, the value and what is allowed, before any data
or model is touched. Unknown keys are rejected too (``sae.expanson`` is a typo, not a new knob).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from layerwise.errors import UserError

PARAMS_FILE = "params.yaml"
T = TypeVar("T")
SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
"""Task and model keys: they become folder names, DVC stage names and MLflow run names."""


class ConfigError(UserError):
    """A params value is missing, of the wrong type, or out of range."""


# --------------------------------------------------------------------------------------------
# Generic dataclass loading: type checks from annotations, unknown keys rejected.
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it (lists copied, dataclasses built)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} must be {_type_name(tp)}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} must be a list of {_type_name(item_tp)}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        return {
            _coerce(k, key_tp, f"{key} key"): _coerce(v, val_tp, f"{key}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value!r} must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking types and rejecting unknown keys."""
    where = prefix or "params"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        bad = ", ".join(f"{prefix + '.' if prefix else ''}{k}" for k in unknown)
        raise ConfigError(f"unknown key(s) {bad}; allowed keys in {where}: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing key {key} ({_type_name(hints[name])})")
            continue
        kwargs[name] = _coerce(data[name], hints[name], key)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(prefix)
    return obj


def _positive(prefix: str, name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{prefix}.{name}={value!r} must be > 0")


def _non_negative(prefix: str, name: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{prefix}.{name}={value!r} must be >= 0")


def _fraction(prefix: str, name: str, value: float, *, open_right: bool = False) -> None:
    if not (0 <= value < 1 if open_right else 0 <= value <= 1):
        interval = "[0, 1)" if open_right else "[0, 1]"
        raise ConfigError(f"{prefix}.{name}={value!r} must be in {interval}")


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
SOURCE_SCHEMES = ("package:", "hub:")


@dataclass
class LabelSpec:
    """How a task's raw label column becomes class ids."""

    kind: Literal["column", "sign", "bins", "map"] = "column"
    """``column``: the column already holds class names; ``sign``: negative/positive by the sign
    of a numeric score, dropping |score| < ``threshold``; ``bins``: ``len(names)`` equal-width
    bins of a numeric score over [``low``, ``high``] (ordinal classes); ``map``: raw value ->
    class name through ``mapping`` (rows whose value is not in it are dropped)."""
    threshold: float = 0.0
    """``sign`` only: scores with absolute value below this are dropped as neutral."""
    low: float = 0.0
    """``bins`` only: left edge of the first bin."""
    high: float = 1.0
    """``bins`` only: right edge of the last bin."""
    names: list[str] = field(default_factory=list)
    """Class names. ``sign``: [negative, positive]; ``bins``: one per bin, in bin order (must
    also be in sorted order, so class id == bin index and ordinal metrics stay meaningful)."""
    mapping: dict[str, str] = field(default_factory=dict)
    """``map`` only: raw label (as a string) -> class name."""

    def validate(self, prefix: str) -> None:
        if self.kind == "sign":
            _non_negative(prefix, "threshold", self.threshold)
            if len(self.names) != 2:
                raise ConfigError(f"{prefix}.names={self.names!r} must hold 2 names for 'sign'")
        if self.kind == "bins":
            if not self.low < self.high:
                raise ConfigError(f"{prefix}.low={self.low} must be < {prefix}.high={self.high}")
            if len(self.names) < 2:
                raise ConfigError(f"{prefix}.names={self.names!r} must hold >= 2 bin names")
            if self.names != sorted(self.names):
                raise ConfigError(
                    f"{prefix}.names={self.names!r} must be in sorted order (class id = bin)"
                )
        if self.kind == "map" and not self.mapping:
            raise ConfigError(f"{prefix}.mapping is empty; 'map' needs raw value -> class name")
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"{prefix}.names={self.names!r} has duplicates")


@dataclass
class TaskDef:
    """One text-classification task: where its data comes from and how to split it."""

    source: str
    """``package:<distribution>:<path>``, ``hub:<dataset id>`` or a local path."""
    format: Literal["csv", "tsv", "jsonl", "parquet", "folder", "auto"] = "auto"
    """File format; ``folder`` = one sub-folder per label holding ``.txt`` files; ``auto``
    guesses from the suffix (a directory means ``folder`` unless it holds data files)."""
    text_field: str = "text"
    """Column holding the text (ignored for ``folder``)."""
    label_field: str = "label"
    """Column holding the raw label (ignored for ``folder``)."""
    labels: LabelSpec = field(default_factory=LabelSpec)
    """How raw labels become classes."""
    max_train: int = 2000
    """Train split size cap: the train split takes what is left after val and analysis, up to
    this many texts."""
    max_val: int = 500
    """Exact val split size (fails if the data cannot provide it)."""
    max_analysis: int = 1000
    """Exact analysis split size (texts used for similarity, SAE evaluation and features)."""
    description: str = ""
    """What the task stands for (shown in the paper tables)."""

    def validate(self, prefix: str) -> None:
        for name in ("max_train", "max_val", "max_analysis"):
            _positive(prefix, name, getattr(self, name))
        check_source(self.source, f"{prefix}.source")


@dataclass
class ModelDef:
    """A pre-trained encoder and the layers whose activations the SAEs and features study."""

    source: str
    """``package:<distribution>:<path>``, ``hub:<model id>`` or a ``save_pretrained`` folder."""
    layers: list[int]
    """Early, middle and late layers (0 = embedding output, so layer k is hidden_states[k])."""
    description: str = ""
    max_train: int | None = None
    """Use at most this many of each task's train texts with this model (null: all). A larger
    model runs at a smaller scale (the paper's own runs used 1% samples) so the default
    pipeline stays affordable; the texts are a stratified sample fixed by ``seed``."""
    max_val: int | None = None
    """The same cap on each task's val split (null: all)."""
    max_analysis: int | None = None
    """The same cap on each task's analysis split (null: all)."""
    sae_train_tokens: int | None = None
    """Tokens per SAE for this model's SAEs, in place of ``sae.train_tokens`` (null: that).
    A ``sae`` section that trains by ``epochs`` instead applies to every model."""

    def validate(self, prefix: str) -> None:
        check_source(self.source, f"{prefix}.source")
        for name in ("max_train", "max_val", "max_analysis", "sae_train_tokens"):
            if getattr(self, name) is not None:
                _positive(prefix, name, getattr(self, name))
        if not self.layers:
            raise ConfigError(f"{prefix}.layers is empty; give e.g. [2, 4, 6]")
        for i, layer in enumerate(self.layers):
            if layer < 0:
                raise ConfigError(f"{prefix}.layers[{i}]={layer} must be >= 0")
        if len(set(self.layers)) != len(self.layers) or self.layers != sorted(self.layers):
            raise ConfigError(f"{prefix}.layers={self.layers} must be increasing and unique")


@dataclass
class DataParams:
    """Cleaning shared by all tasks."""

    min_chars: int = 3
    """Texts shorter than this (after whitespace normalisation) are dropped."""
    stats_model: str = ""
    """Model key whose tokenizer measures token lengths in prepare's metrics (default: the
    first entry of ``models``)."""

    def validate(self, prefix: str) -> None:
        _non_negative(prefix, "min_chars", self.min_chars)


@dataclass
class FinetuneParams:
    """Fine-tuning (transformers Trainer)."""

    epochs: float = 2.0
    batch_size: int = 16
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 128
    """Tokens per text; the paper used 512 (reachable, slower)."""
    grad_clip: float = 1.0
    eval_batch_size: int = 64
    group_by_length: bool = True
    """Batch texts of similar length together: less padding, faster on CPU."""
    logging_steps: int = 10
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Training precision: ``auto`` = bfloat16 autocast where the hardware multiplies bf16
    natively (CUDA with bf16, CPUs with AMX or AVX512-BF16), float16 on other CUDA GPUs, else
    float32."""

    data_parallel: bool = False
    """Train on every visible GPU (one process, ``nn.DataParallel``) with the per-device batch
    set so the effective batch stays ``batch_size``. Off: one device, whatever the machine has,
    so results do not depend on how many GPUs are visible."""

    def validate(self, prefix: str) -> None:
        for name in ("epochs", "batch_size", "learning_rate", "max_length", "eval_batch_size"):
            _positive(prefix, name, getattr(self, name))
        _positive(prefix, "logging_steps", self.logging_steps)
        _fraction(prefix, "warmup_ratio", self.warmup_ratio, open_right=True)
        _non_negative(prefix, "weight_decay", self.weight_decay)
        _non_negative(prefix, "grad_clip", self.grad_clip)


@dataclass
class CompareParams:
    """Layer-wise PT vs FT similarity and the activation stores for the SAEs."""

    exclude_special: bool = False
    """Exclude [CLS]/[SEP] tokens from token-level similarity (the paper kept them)."""
    batch_size: int = 32
    token_budget: int = 100_000
    """Train-split tokens stored per layer for SAE training: whole texts are added (seeded
    order) until the count reaches this, so the store holds at least this many (or all)."""
    n_boot: int = 1000
    """Bootstrap resamples (cosine, probe CIs)."""
    n_blocks: int = 10
    """Jackknife blocks over texts (CKA CIs)."""
    probe_folds: int = 5
    """Outer folds of the probes: every analysis text is predicted once, out of fold."""
    probe_c_grid: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])
    """Inverse L2 strengths each probe searches (also the fine-tune stage's PT-probe baseline):
    a fixed C overfits hundreds of dimensions on hundreds of texts, so layers would be compared
    through their overfitting."""
    probe_inner_folds: int = 3
    """Folds of that search, inside each outer fold's training texts (nested cross-validation:
    a text's prediction never depends on a strength chosen with it)."""
    confidence: float = 0.95
    pooling: Literal["auto", "mean", "first", "last"] = "auto"
    """How a text becomes one vector for the probes (and the fine-tune stage's PT-probe
    baseline): ``mean`` over its tokens, its ``first`` token ([CLS]) or its ``last`` real token;
    ``auto`` = what the classifier reads for decoder-only models (the last token) and the mean
    for encoders (the paper's mean-pooled sentences)."""

    def validate(self, prefix: str) -> None:
        for name in ("batch_size", "token_budget", "n_boot"):
            _positive(prefix, name, getattr(self, name))
        if self.n_blocks < 2:
            raise ConfigError(f"{prefix}.n_blocks={self.n_blocks} must be >= 2")
        if self.probe_folds < 2:
            raise ConfigError(f"{prefix}.probe_folds={self.probe_folds} must be >= 2")
        if self.probe_inner_folds < 2:
            raise ConfigError(f"{prefix}.probe_inner_folds={self.probe_inner_folds} must be >= 2")
        if not self.probe_c_grid or min(self.probe_c_grid) <= 0:
            raise ConfigError(f"{prefix}.probe_c_grid={self.probe_c_grid} must be numbers > 0")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"{prefix}.confidence={self.confidence} must be in (0, 1)")


@dataclass
class SAEParams:
    """Sparse autoencoders on the activation stores (see bench/RESULTS.md for the sweep behind
    the defaults)."""

    sparsity: Literal["l1", "topk"] = "l1"
    """``l1``: ReLU + L1 penalty (the paper's kind); ``topk``: keep the k largest."""
    expansion: float = 4.0
    """Dictionary width = expansion x model width (the paper: 1024/768 = 1.333)."""
    l1_coefficient: float = 1.5
    """L1 weight on the per-token sum of feature activations, in scaled space (activations
    scaled to mean norm sqrt(d)). The paper's ``1e-3 * mean|z|`` on unscaled data corresponds to
    about ``1e-3 * d / F * scale``. With ``l0_target`` set, the value each SAE starts from."""
    l0_target: float | None = 48.0
    """``l1`` only: tune each SAE's L1 coefficient during training to end at this L0 (active
    features per token), so PT and FT dictionaries are compared at matched sparsity; one fixed
    coefficient leaves them far apart (a fine-tuned late layer much sparser than its PT twin).
    Null: every SAE keeps ``l1_coefficient`` (the paper's way)."""
    k: int = 64
    """Active features per token for ``topk``."""
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    lr_decay_ratio: float = 0.2
    """Final fraction of steps over which the learning rate decays linearly to ~0."""
    batch_size: int = 1024
    train_tokens: int | None = 600_000
    """Training tokens per SAE (several passes over a small store); or set ``epochs``."""
    epochs: float | None = None
    """Passes over the training store; exactly one of ``epochs`` and ``train_tokens``."""
    pooling: Literal["token", "mean"] = "token"
    """``token``: train on every token (the field's standard); ``mean``: on mean-pooled
    sentence activations (the paper's choice)."""
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Training matmul precision: ``auto`` = bfloat16 autocast where the hardware runs it fast
    (CUDA with bf16, CPUs with AMX or AVX512-BF16), else float32. Evaluation is always float32."""
    eval_batch_size: int = 4096

    def validate(self, prefix: str) -> None:
        for name in ("expansion", "learning_rate", "batch_size", "eval_batch_size"):
            _positive(prefix, name, getattr(self, name))
        if (self.epochs is None) == (self.train_tokens is None):
            raise ConfigError(
                f"set exactly one of {prefix}.epochs={self.epochs!r} and "
                f"{prefix}.train_tokens={self.train_tokens!r} (the other null)"
            )
        for name in ("epochs", "train_tokens"):
            if getattr(self, name) is not None:
                _positive(prefix, name, getattr(self, name))
        _non_negative(prefix, "l1_coefficient", self.l1_coefficient)
        if self.l0_target is not None:
            _positive(prefix, "l0_target", self.l0_target)
            if self.sparsity == "l1" and self.l1_coefficient == 0:
                raise ConfigError(
                    f"{prefix}.l1_coefficient=0 cannot be tuned to {prefix}.l0_target="
                    f"{self.l0_target} (it only scales): start from a positive coefficient"
                )
        _non_negative(prefix, "warmup_steps", self.warmup_steps)
        _fraction(prefix, "lr_decay_ratio", self.lr_decay_ratio, open_right=True)
        if self.k <= 0:
            raise ConfigError(f"{prefix}.k={self.k} must be > 0")


@dataclass
class CrosscoderParams:
    """Crosscoders: one dictionary trained jointly on the PT and FT activations of the same
    tokens, with one decoder per model (model diffing; see ``layerwise.sae.crosscoder``)."""

    sparsity: Literal["batchtopk", "l1"] = "batchtopk"
    """``batchtopk``: the k * batch best latent scores of a batch (Minder et al. 2025); ``l1``:
    ReLU + decoder-norm-weighted L1 (Lindsey et al. 2024)."""
    expansion: float = 4.0
    """Latents = expansion x model width."""
    k: int = 32
    """Mean active latents per token for ``batchtopk``."""
    l1_coefficient: float = 1.0
    """``l1`` only: weight of the penalty, scaled space."""
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    lr_decay_ratio: float = 0.2
    batch_size: int = 1024
    train_tokens: int = 400_000
    """Training tokens per crosscoder (passes over the paired train store)."""
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """As ``sae.precision``."""
    eval_batch_size: int = 4096
    pt_only_below: float = 0.1
    """A latent is PT-only when its relative FT decoder norm r = |d_FT| / (|d_PT| + |d_FT|) is
    below this ..."""
    ft_only_above: float = 0.9
    """... FT-only when r is above this, shared otherwise."""
    scaling_max_ratio: float = 0.3
    """Latent Scaling: a PT-only / FT-only latent whose other model still explains this share
    of what it explains on its own side is flagged an artefact and not counted as 'only'."""
    n_permutations: int = 20
    """Label permutations behind each layer's selectivity null."""
    top_latents: int = 5
    """FT-only latents per layer in the paper's table (by selectivity)."""

    def validate(self, prefix: str) -> None:
        for name in ("expansion", "learning_rate", "batch_size", "eval_batch_size"):
            _positive(prefix, name, getattr(self, name))
        for name in ("k", "train_tokens", "n_permutations", "top_latents"):
            _positive(prefix, name, getattr(self, name))
        _non_negative(prefix, "l1_coefficient", self.l1_coefficient)
        _non_negative(prefix, "warmup_steps", self.warmup_steps)
        _fraction(prefix, "lr_decay_ratio", self.lr_decay_ratio, open_right=True)
        _fraction(prefix, "scaling_max_ratio", self.scaling_max_ratio)
        if not 0 <= self.pt_only_below < self.ft_only_above <= 1:
            raise ConfigError(
                f"need 0 <= {prefix}.pt_only_below={self.pt_only_below} < "
                f"{prefix}.ft_only_above={self.ft_only_above} <= 1"
            )


@dataclass
class FeaturesParams:
    """Which SAE features change with fine-tuning."""

    top_n: int = 10
    """Features per (layer, PT|FT) picked by variance across texts (the paper: 10)."""
    top_k: int = 10
    """Top-activating texts per feature."""
    reduce: Literal["max", "mean"] = "max"
    """Per-text activation of a feature: max or mean over the text's tokens."""
    selectivity_threshold: float = 0.8
    """A feature is label-selective when its best one-vs-rest ROC AUC reaches this."""
    kept_threshold: float = 0.7
    """An FT feature is 'kept' when some PT decoder direction has cosine >= this."""
    examples_per_label: int = 1
    """Example texts per label for the token maps."""
    top_tokens: int = 8
    token_min_count: int = 5
    """A token id must occur this often to be listed among a feature's top tokens."""
    n_permutations: int = 20
    """Label permutations behind each unit's selectivity null (selectivity is a maximum of
    one-vs-rest AUCs, so chance is above 0.5 and grows with the class count)."""
    exclude_special: bool = True
    """Leave [CLS]/[SEP]-type features (most of their activation on special tokens) out of the
    top-feature selection; they are counted and reported apart either way."""
    special_share: float = 0.5
    """A feature is a special-token feature when at least this share of its activation mass
    on the analysis split sits on special tokens."""

    def validate(self, prefix: str) -> None:
        for name in ("top_n", "top_k", "examples_per_label", "top_tokens", "token_min_count"):
            _positive(prefix, name, getattr(self, name))
        _fraction(prefix, "selectivity_threshold", self.selectivity_threshold)
        _fraction(prefix, "kept_threshold", self.kept_threshold)
        _positive(prefix, "n_permutations", self.n_permutations)
        _fraction(prefix, "special_share", self.special_share)


@dataclass
class PaperParams:
    """Thresholds of the rules turning numbers into verdicts in ``paper/summary.md`` (the rules
    themselves are written out there, with these values filled in)."""

    reset_small: float = 0.25
    """Resetting blocks to PT 'costs little' when the seed-mean share of the fine-tuning gain
    it loses (reset.csv ``lost_gain``) is below this."""
    reset_large: float = 0.5
    """... and 'costs most of the gain' when that share is at least this (the reset stage's
    midpoint uses one half too)."""
    middle_lo: float = 1 / 3
    """The middle of the network starts at this relative depth (layer / L) ..."""
    middle_hi: float = 2 / 3
    """... and ends here: C2's transition must lie in [middle_lo, middle_hi]."""
    ft_only_margin: float = 0.02
    """C3: the late layer's crosscoder FT-only fraction must exceed both the early layer's and
    the shuffled-label control's late one by at least this (seed-level CI above zero)."""
    selectivity_margin: float = 0.02
    """C3: late FT features' split-half selectivity must exceed its permutation null (and the
    PT features' excess) by at least this."""
    overlap_rel_max: float = 0.9
    """C3: late PT-FT dictionary overlap, normalised between the random floor (0) and the
    PT-PT seed baseline (1), must stay below this."""
    dpi: int = 160

    def validate(self, prefix: str) -> None:
        for name in ("reset_small", "reset_large", "middle_lo", "middle_hi"):
            _fraction(prefix, name, getattr(self, name))
        if not self.reset_small < self.reset_large:
            raise ConfigError(f"{prefix}.reset_small must be below {prefix}.reset_large")
        if not self.middle_lo < self.middle_hi:
            raise ConfigError(f"{prefix}.middle_lo must be below {prefix}.middle_hi")
        for name in ("ft_only_margin", "selectivity_margin"):
            _non_negative(prefix, name, getattr(self, name))
        _positive(prefix, "overlap_rel_max", self.overlap_rel_max)
        _positive(prefix, "dpi", self.dpi)


@dataclass
class MlflowParams:
    experiment: str = "layerwise"
    """MLflow experiment name."""


@dataclass
class Params:
    """Everything in ``params.yaml``."""

    seed: int
    """Seeds data splits and cleaning (one split for all training seeds)."""
    seeds: list[int]
    """Training seeds: finetune and every later stage run once per seed."""
    tasks: list[str]
    """Task keys to run, each defined in ``task_defs``."""
    task_defs: dict[str, TaskDef]
    """Task key -> where its data comes from; keys are safe names (``SAFE_NAME``)."""
    models: dict[str, ModelDef]
    """Model key (a safe name) -> source and layers; each runs the full protocol: every seed
    in ``seeds`` and every control."""
    size_models: dict[str, ModelDef] = field(default_factory=dict)
    """Models of the model-size comparison: each runs at ``size_seeds`` with the shuffled-label
    control only (no reset, seed floor, SAE seed baseline or crosscoders), which is what the
    similarity-across-sizes figure and the one-seed claim checks need. A separate section
    because DVC's ``matrix`` gives every model of one stage the same seeds."""
    size_seeds: list[int] = field(default_factory=lambda: [0])
    """Training seeds of ``size_models``. Both keys default here, but dvc.yaml's matrices
    interpolate them, so params.yaml must hold them (``size_models: {}`` for none)."""
    device: str = "auto"
    """Where models and SAEs run: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or
    ``cuda:N``. A param, so DVC knows it: pin ``cpu`` or ``cuda`` to record which device made a
    ``dvc.lock`` (``auto`` means "this machine's", and numbers differ between devices)."""
    data: DataParams = field(default_factory=DataParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    compare: CompareParams = field(default_factory=CompareParams)
    sae: SAEParams = field(default_factory=SAEParams)
    crosscoder: CrosscoderParams = field(default_factory=CrosscoderParams)
    features: FeaturesParams = field(default_factory=FeaturesParams)
    paper: PaperParams = field(default_factory=PaperParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)

    def validate(self, prefix: str) -> None:
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"device={self.device!r}; expected auto, cpu, cuda or cuda:N")
        sections = (
            ("task_defs", self.task_defs),
            ("models", self.models),
            ("size_models", self.size_models),
        )
        for section, keys in sections:
            for key in keys:
                _check_name(key, section)
        both = sorted(set(self.models) & set(self.size_models))
        if both:
            raise ConfigError(
                f"model {both[0]!r} is in both models and size_models; keep it in one "
                "(models: every seed and control; size_models: size_seeds, shuffled control)"
            )
        if self.size_models and not self.size_seeds:
            raise ConfigError("size_seeds is empty; give at least one seed, e.g. [0]")
        if not self.tasks:
            raise ConfigError("tasks is empty; list at least one key of task_defs")
        if not self.seeds:
            raise ConfigError("seeds is empty; give at least one training seed, e.g. [0]")
        if not self.models:
            raise ConfigError("models is empty; define at least one model")
        for i, task in enumerate(self.tasks):
            if task not in self.task_defs:
                raise ConfigError(
                    f"tasks[{i}]={task!r} is not defined; known tasks: {sorted(self.task_defs)}"
                )
        if self.data.stats_model and self.data.stats_model not in self.models:
            raise ConfigError(
                f"data.stats_model={self.data.stats_model!r} is not a key of models "
                f"{sorted(self.models)}"
            )

    # Lookups with the error a user needs when a stage is called with a bad key.
    def task(self, key: str) -> TaskDef:
        if key not in self.task_defs:
            raise ConfigError(f"unknown task {key!r}; known tasks: {sorted(self.task_defs)}")
        return self.task_defs[key]

    @property
    def all_models(self) -> dict[str, ModelDef]:
        """Every model that runs: ``models``, then ``size_models``."""
        return {**self.models, **self.size_models}

    def model(self, key: str) -> ModelDef:
        if key not in self.all_models:
            raise ConfigError(f"unknown model {key!r}; known models: {sorted(self.all_models)}")
        return self.all_models[key]

    def model_key(self, key: str) -> str:
        """Where ``key`` is defined in params.yaml: ``models.<key>`` or ``size_models.<key>``
        (for messages and logged params)."""
        return f"{'size_models' if self.is_size_model(key) else 'models'}.{key}"

    def is_size_model(self, key: str) -> bool:
        """Whether ``key`` runs the model-size protocol (one seed, shuffled control only)."""
        return key in self.size_models

    def seeds_of(self, model: str) -> list[int]:
        """The training seeds ``model`` runs at: ``size_seeds`` or ``seeds``."""
        return list(self.size_seeds if self.is_size_model(model) else self.seeds)

    def check_seed(self, seed: int, model: str | None = None) -> int:
        seeds, key = (
            (self.size_seeds, "size_seeds")
            if model is not None and self.is_size_model(model)
            else (self.seeds, "seeds")
        )
        if seed not in seeds:
            raise ConfigError(f"seed {seed!r} is not in {key}={seeds}")
        return seed

    @property
    def stats_model_key(self) -> str:
        return self.data.stats_model or next(iter(self.models))


def _check_name(key: str, section: str) -> None:
    """Refuse a key that is not a safe name (``../../x``, ``Bad Key``): keys become paths
    under the repo, so an unchecked one could write outside it or break a stage name."""
    if not SAFE_NAME.fullmatch(key):
        raise ConfigError(
            f"{section} key {key!r} is not a safe name: use lowercase letters, digits, '_' and "
            "'-', starting with a letter or digit (keys become output folders and stage names)"
        )


def check_source(source: str, key: str) -> None:
    """Reject sources whose scheme we do not know (``s3://x``, ``package:x`` without a path)."""
    if not source:
        raise ConfigError(f"{key} is empty")
    scheme, sep, rest = source.partition(":")
    if not sep or len(scheme) == 1:  # no colon, or a Windows drive letter: a local path
        return
    if source.startswith("package:"):
        dist, sep2, path = rest.partition(":")
        if not dist or not sep2 or not path:
            raise ConfigError(f"{key}={source!r}: write package:<distribution>:<path inside it>")
        return
    if source.startswith("hub:"):
        if not rest:
            raise ConfigError(f"{key}={source!r}: write hub:<id>, e.g. hub:bert-base-uncased")
        return
    if source.startswith("parts:"):
        if not rest or ":" in rest:
            raise ConfigError(
                f"{key}={source!r}: write parts:<archive>, e.g. parts:all-mpnet-base-v2"
            )
        return
    if source.startswith(("/", ".")):
        return
    raise ConfigError(
        f"{key}={source!r} has unknown source scheme {scheme + ':'!r}; "
        "use package:<distribution>:<path>, parts:<archive>, hub:<id> or a local path"
    )


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-3`` and ``2e-05`` (what ``dvc exp run
    -S sae.learning_rate=2e-5`` writes, since DVC's YAML is 1.2) are numbers, not the strings
    YAML 1.1 makes of exponents without a dot."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse params YAML the way DVC writes it (:class:`ParamsLoader`)."""
    return yaml.load(text, Loader=ParamsLoader)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {str(path)!r} not found (run from the repo root)")
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {str(path)!r} is not valid YAML: {exc}") from exc
    return params_from_dict(raw)


def params_from_dict(raw: Any) -> Params:
    return from_dict(Params, raw)


def section_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a flat ``{'a.b': value}`` dict, e.g. for MLflow params."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = value

    walk("", obj)
    return out
