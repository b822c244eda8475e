"""Splicing: how much of the fine-tuned classifier's behaviour survives when one layer's hidden
state is replaced, measured on the val texts.

A replacement that keeps what the classifier needs (an SAE's or a crosscoder's reconstruction)
should leave its accuracy and loss near the clean model's; replacing the layer by its mean over
val tokens (mean ablation) removes everything the layer carries about the text and sets the
floor. :func:`recovered` reports where the replacement lands between the two, ``(spliced -
ablated) / (clean - ablated)``, with a paired bootstrap over texts: every text is scored under
all three conditions, so resampling texts once for all three cancels what they share (easy and
hard texts).

The replacement is a forward hook on :func:`layerwise.architectures.hidden_state_module`, the
module whose output is ``hidden_states[layer]``. It is built per batch (``MakeReplace``), so a
replacement may depend on the batch itself, e.g. a crosscoder that reads the PT model's state of
the same tokens (recorded once for every layer by :func:`record_states`).

Every forward over the val texts costs as much as the classifier's own evaluation, so the
passes are shared: :func:`clean_pass` scores the clean model and takes every layer's mean (what
ablation puts in) in one pass, and all passes may run under the autocast dtype the fine-tune
stage scored the classifier with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from layerwise.activations import iterate_batches, tokenize_texts
from layerwise.architectures import hidden_state_module
from layerwise.models import autocast_dtype, load_classifier, load_tokenizer
from layerwise.schema import SAE_SPLICE_KEYS
from layerwise.similarity.intervals import check_confidence

if TYPE_CHECKING:
    from pathlib import Path

    from torch import Tensor

    from layerwise.config import FinetuneParams
    from layerwise.sae.model import SparseAutoencoder

Replace = Callable[["Tensor"], "Tensor"]
"""A layer's hidden state ``[B, T, D]`` -> its replacement (same shape; any device/dtype)."""
MakeReplace = Callable[[int, dict[str, "Tensor"]], Replace]
"""Called once per batch with the batch's number in :meth:`ValTexts.batches` order and the
tokenized batch (``input_ids``, ``attention_mask``) before the classifier's forward; returns that
batch's :data:`Replace`."""

_BOOT_CHUNK_ELEMS = 2_000_000
"""Bound on the bootstrap draws held at once (int64s), so memory does not grow with n_boot."""


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValTexts:
    """Tokenized val texts with their labels and how to batch them."""

    ids: list[list[int]]
    labels: np.ndarray
    pad_id: int
    batch_size: int
    device: Any

    @classmethod
    def tokenize(
        cls,
        tokenizer: Any,
        texts: list[str],
        labels: np.ndarray,
        max_length: int,
        batch_size: int,
        device: Any,
    ) -> ValTexts:
        labels = np.asarray(labels, dtype=np.int64)
        if len(texts) != len(labels) or len(texts) == 0:
            raise ValueError(f"got {len(texts)} texts and {len(labels)} labels: need as many, > 0")
        ids = tokenize_texts(tokenizer, texts, max_length)
        return cls(ids, labels, int(tokenizer.pad_token_id), batch_size, device)

    def batches(self) -> Iterator[tuple[np.ndarray, dict[str, Tensor]]]:
        """(text indices, padded batch on ``device``), length-sorted."""
        return iterate_batches(self.ids, self.batch_size, self.pad_id, self.device)


@dataclass(frozen=True)
class TextScores:
    """Per val text: whether the classifier got it right, and its cross-entropy loss."""

    correct: np.ndarray
    """``[n]`` bool."""
    loss: np.ndarray
    """``[n]`` float64, natural-log cross-entropy of the true label."""

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def mean_loss(self) -> float:
        return float(self.loss.mean())


# --------------------------------------------------------------------------------------------
# Replacements and the hook
# --------------------------------------------------------------------------------------------


def replacing_hook(replace: Replace) -> Callable[[Any, Any, Any], Any]:
    """A forward hook that swaps a module's output hidden state for ``replace(hidden)``, handed
    back on the hidden state's device and in its dtype (the replacement may be computed
    elsewhere, e.g. by a CPU SAE in a CUDA classifier, or in another precision); a tuple output
    keeps its other members."""

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        new = replace(hidden).to(device=hidden.device, dtype=hidden.dtype)
        if new.shape != hidden.shape:
            raise ValueError(f"replacement has shape {tuple(new.shape)}, expected {hidden.shape}")
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


def sae_replace(sae: SparseAutoencoder) -> Replace:
    """The SAE's reconstruction of every token (float32 into the SAE)."""

    def replace(hidden: Tensor) -> Tensor:
        shape = hidden.shape
        return sae(hidden.reshape(-1, shape[-1]).float()).x_hat.reshape(shape)

    return replace


def splice_hook(sae: SparseAutoencoder) -> Callable[[Any, Any, Any], Any]:
    """A forward hook that replaces the hidden state by its SAE reconstruction."""
    return replacing_hook(sae_replace(sae))


def constant_replace(vector: Tensor) -> Replace:
    """Every token (padding too, which nothing reads) replaced by ``vector`` ``[D]``."""
    return lambda hidden: vector.to(hidden.device, hidden.dtype).expand_as(hidden)


def per_batch(replace: Replace) -> MakeReplace:
    """A replacement that does not depend on the batch, as a :data:`MakeReplace`."""
    return lambda _number, _batch: replace


@contextmanager
def hooked(module: Any, replace: Replace | None) -> Iterator[None]:
    """``module``'s output replaced inside the block (nothing when ``replace`` is None)."""
    handle = module.register_forward_hook(replacing_hook(replace)) if replace is not None else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def text_scores(
    classifier: Any,
    val: ValTexts,
    layer: int = 0,
    make_replace: MakeReplace | None = None,
    dtype: torch.dtype | None = None,
) -> TextScores:
    """Per-text correctness and loss of ``classifier`` on ``val``, with ``hidden_states[layer]``
    replaced by ``make_replace(number, batch)`` (the clean model when ``make_replace`` is None),
    under ``dtype`` autocast when given."""
    module = hidden_state_module(classifier, layer)
    scores = _ScoreSheet(len(val.ids))
    with torch.inference_mode(), _autocast(val.device, dtype):
        for number, (idx, batch) in enumerate(val.batches()):
            replace = make_replace(number, batch) if make_replace is not None else None
            with hooked(module, replace):
                logits = classifier(**batch).logits
            scores.add(idx, logits, val.labels)
    return scores.done()


def clean_pass(
    classifier: Any, val: ValTexts, layers: list[int], dtype: torch.dtype | None = None
) -> tuple[TextScores, dict[int, Tensor]]:
    """The clean classifier's :func:`text_scores` and, from the same forward pass, each of
    ``layers``' ``[D]`` float32 mean of ``hidden_states[layer]`` over the val texts' real tokens
    (``attention_mask``), accumulated in float64: what mean ablation puts in the layer's place."""
    scores = _ScoreSheet(len(val.ids))
    sums: dict[int, Tensor] = {}
    count = 0
    for idx, batch, logits, states in _recorded_forwards(classifier, val, layers, dtype):
        scores.add(idx, logits, val.labels)
        mask = batch["attention_mask"].bool()
        for layer, state in states.items():
            summed = state[mask].double().sum(0)
            sums[layer] = sums[layer] + summed if layer in sums else summed
        count += int(mask.sum())
    return scores.done(), {layer: (sums[layer] / count).float() for layer in layers}


def mean_hidden_state(model: Any, val: ValTexts, layer: int) -> Tensor:
    """One layer's mean, as :func:`clean_pass` takes it (``model`` must return logits)."""
    return clean_pass(model, val, [layer])[1][layer]


@dataclass(frozen=True)
class CleanRun:
    """The fine-tuned classifier on the val texts, tokenized and scored as the fine-tune stage
    scores them (its ``max_length``, eval batch size and autocast), with every spliced layer's
    mean: the reference points every replacement of a layer is compared with."""

    classifier: Any
    val: ValTexts
    dtype: torch.dtype | None
    scores: TextScores
    means: dict[int, Tensor]

    @classmethod
    def load(
        cls, ft_dir: Path, split: Any, finetune: FinetuneParams, layers: list[int], device: Any
    ) -> CleanRun:
        """Load the classifier saved in ``ft_dir``, tokenize ``split`` (a val split with
        ``text`` and ``label``) and take the one clean pass."""
        classifier = load_classifier(str(ft_dir)).to(device).eval()
        val = ValTexts.tokenize(
            load_tokenizer(str(ft_dir)),
            list(split["text"]),
            np.asarray(split["label"]),
            max_length=finetune.max_length,
            batch_size=finetune.eval_batch_size,
            device=device,
        )
        dtype = autocast_dtype(finetune.precision, device)
        scores, means = clean_pass(classifier, val, layers, dtype)
        return cls(classifier, val, dtype, scores, means)

    def scores_with(self, layer: int, make_replace: MakeReplace) -> TextScores:
        """The classifier's scores with ``hidden_states[layer]`` replaced."""
        return text_scores(self.classifier, self.val, layer, make_replace, self.dtype)

    def ablated(self, layer: int) -> TextScores:
        """The scores with the layer mean-ablated (every token set to the layer's val mean)."""
        return self.scores_with(layer, per_batch(constant_replace(self.means[layer])))


def record_states(
    model: Any, val: ValTexts, layers: list[int], dtype: torch.dtype | None = None
) -> list[dict[int, Tensor]]:
    """Per batch (in :meth:`ValTexts.batches` order), ``model``'s ``hidden_states[layer]`` of each
    of ``layers``, from one forward pass per batch: what a replacement that reads another
    model's state of the same tokens (the crosscoder's PT side) looks up by batch number."""
    return [states for *_, states in _recorded_forwards(model, val, layers, dtype)]


class _ScoreSheet:
    """Per-text correctness and loss, filled batch by batch (texts come length-sorted)."""

    def __init__(self, n: int) -> None:
        self.correct, self.loss = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.float64)

    def add(self, idx: np.ndarray, logits: Tensor, labels: np.ndarray) -> None:
        logits = logits.float()
        y = torch.as_tensor(labels[idx], device=logits.device)
        ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        self.loss[idx] = ce.cpu().numpy()
        self.correct[idx] = (logits.argmax(-1) == y).cpu().numpy()

    def done(self) -> TextScores:
        return TextScores(self.correct, self.loss)


def _recorded_forwards(
    model: Any, val: ValTexts, layers: list[int], dtype: torch.dtype | None
) -> Iterator[tuple[np.ndarray, dict[str, Tensor], Tensor | None, dict[int, Tensor]]]:
    """Per batch: (text indices, batch, logits or None, ``{layer: hidden_states[layer]}``), read
    by hooks on the modules :func:`text_scores` replaces, so a mean or a recorded state is
    exactly what a replacement at that layer would see."""
    seen: dict[int, Tensor] = {}

    def recorder(layer: int) -> Callable[[Any, Any, Any], None]:
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            seen[layer] = output[0] if isinstance(output, tuple) else output

        return record

    handles = [
        hidden_state_module(model, layer).register_forward_hook(recorder(layer)) for layer in layers
    ]
    try:
        with torch.inference_mode(), _autocast(val.device, dtype):
            for idx, batch in val.batches():
                seen.clear()
                out = model(**batch)
                yield idx, batch, getattr(out, "logits", None), dict(seen)
    finally:
        for handle in handles:
            handle.remove()


def _autocast(device: Any, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``'s type; a no-op when ``dtype`` is None."""
    return torch.autocast(
        torch.device(device).type, dtype=dtype or torch.bfloat16, enabled=dtype is not None
    )


# --------------------------------------------------------------------------------------------
# The share recovered
# --------------------------------------------------------------------------------------------


def recovered(
    clean: np.ndarray,
    spliced: np.ndarray,
    ablated: np.ndarray,
    n_boot: int,
    seed: int,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """``(point, lo, hi)`` of ``(mean(spliced) - mean(ablated)) / (mean(clean) - mean(ablated))``.

    Per-text vectors of one statistic (correctness, or loss: then the value is the share of the
    ablation's loss increase that the replacement removes). 1 means the replacement is as good
    as the clean layer, 0 as bad as mean ablation. The CI is a percentile bootstrap over texts,
    paired: each resample of text indices applies to all three vectors (drawn from
    ``numpy.random.default_rng(seed)``). When clean and ablated means are equal the share is
    undefined and all three values are NaN; resamples where they are equal are dropped from
    the interval.
    """
    check_confidence(confidence)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    c, s, a = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (clean, spliced, ablated))
    if not c.size or c.shape != s.shape or c.shape != a.shape:
        sizes = (c.size, s.size, a.size)
        raise ValueError(f"recovered: need three nonempty vectors of one size, got {sizes}")
    num, den = s - a, c - a
    if den.sum() == 0:
        return float("nan"), float("nan"), float("nan")
    point = float(num.sum() / den.sum())
    ratios = _bootstrap_ratios(num, den, n_boot, seed)
    ratios = ratios[np.isfinite(ratios)]
    if not ratios.size:
        return point, float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(ratios, [alpha, 1.0 - alpha])
    return point, float(lo), float(hi)


def _bootstrap_ratios(num: np.ndarray, den: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot]`` resampled ``sum(num) / sum(den)`` (texts drawn with replacement), in chunks."""
    n = num.size
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK_ELEMS // n)
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:stop] = num[idx].sum(1) / den[idx].sum(1)
    return out


def splice_metrics(
    clean: TextScores,
    spliced: TextScores,
    ablated: TextScores,
    n_boot: int,
    seed: int,
    confidence: float = 0.95,
) -> dict[str, float]:
    """The ``schema.SAE_SPLICE_KEYS`` of one layer's replacement (accuracy and loss, spliced and
    ablated, and the shares recovered with their CIs)."""
    out = {
        "ft_accuracy_spliced": spliced.accuracy,
        "ft_accuracy_ablated": ablated.accuracy,
        "ft_loss_clean": clean.mean_loss,
        "ft_loss_spliced": spliced.mean_loss,
        "ft_loss_ablated": ablated.mean_loss,
    }
    for stat in ("correct", "loss"):
        name = "accuracy" if stat == "correct" else "loss"
        vectors = (getattr(t, stat) for t in (clean, spliced, ablated))
        point, lo, hi = recovered(*vectors, n_boot=n_boot, seed=seed, confidence=confidence)
        out.update(
            {
                f"ft_recovered_{name}": point,
                f"ft_recovered_{name}_lo": lo,
                f"ft_recovered_{name}_hi": hi,
            }
        )
    return {k: out[k] for k in SAE_SPLICE_KEYS}


def nan_splice_metrics(clean: TextScores) -> dict[str, float]:
    """``SAE_SPLICE_KEYS`` for a unit that cannot be spliced (a mean-pooled SAE never saw a
    single token's state): NaN, except the clean loss, which does not depend on the unit."""
    out = dict.fromkeys(SAE_SPLICE_KEYS, float("nan"))
    out["ft_loss_clean"] = clean.mean_loss
    return out
