"""A typed sentence through a run's PT and FT encoders and its SAEs: per token, every unit's
feature activations, and the PT-vs-FT cosine of every layer 0..L.

Hidden states come from ``output_hidden_states=True`` (``k = 0`` is the embedding output), the
way the compare stage stores them, so each SAE sees exactly the kind of input it was trained on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from layerwise.app.catalog import ExplorerError, RunKey, unit_layer
from layerwise.app.loaders import Workspace


@dataclass(frozen=True)
class TextActivations:
    """One sentence seen by one run."""

    text: str
    tokens: list[str]
    """The tokenizer's pieces, special tokens included (the SAEs were trained on them too)."""
    units: dict[str, np.ndarray]
    """Unit (``pt_L4``) -> feature activations ``[T, F]`` (float32, nonnegative)."""
    cosine: np.ndarray
    """``[L + 1]``: mean over tokens of cos(PT hidden state, FT hidden state) at layer k."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent per step (tokenize, pt, ft, sae), for the bench and the page's footer."""

    def top_features(self, unit: str, n: int) -> list[tuple[int, float, int]]:
        """The ``n`` features most active anywhere in the sentence: (feature, max activation,
        token position of the max), strongest first; features that never fire are left out."""
        acts = self.units[unit]
        peak = acts.max(axis=0)
        order = np.argsort(-peak, kind="stable")[:n]
        return [(int(f), float(peak[f]), int(acts[:, f].argmax())) for f in order if peak[f] > 0]

    def feature(self, unit: str, feature: int) -> np.ndarray:
        """``[T]`` activations of one feature (an error naming the range when it is unknown)."""
        acts = self.units[unit]
        check_feature(feature, acts.shape[1], unit)
        return acts[:, feature]


def check_feature(feature: int, n_features: int, unit: str, kind: str = "SAE") -> None:
    """Refuse a latent id outside the ``kind`` dictionary ``unit``, naming the valid range."""
    if not 0 <= feature < n_features:
        raise ExplorerError(
            f"feature {feature} does not exist: the {kind} {unit} has features 0..{n_features - 1}"
        )


def check_text(text: str, tokenizer: Any, max_length: int) -> list[int]:
    """The text's token ids, or a clear error for an empty text or one longer than the models
    ever saw (they were fine-tuned and stored at ``max_length``; longer inputs would be cut)."""
    text = text.strip()
    if not text:
        raise ExplorerError("Type a sentence: the text is empty.")
    ids = tokenizer(text, truncation=False)["input_ids"]
    if len(ids) > max_length:
        raise ExplorerError(
            f"The text is {len(ids)} tokens long, above this run's max_length of {max_length} "
            "tokens (finetune.max_length): shorten it."
        )
    return list(ids)


def _hidden_states(encoder: Any, ids: list[int]) -> list[Any]:
    """``hidden_states[k]`` of one unpadded sequence, ``[T, D]`` each, k = 0..L."""
    import torch

    device = next(encoder.parameters()).device
    batch = torch.tensor([ids], dtype=torch.long, device=device)
    with torch.inference_mode():
        out = encoder(
            input_ids=batch, attention_mask=torch.ones_like(batch), output_hidden_states=True
        )
        return [h[0].float() for h in out.hidden_states]


def _mean_cosine(pt: list[Any], ft: list[Any]) -> np.ndarray:
    import torch

    cos = [
        torch.nn.functional.cosine_similarity(a, b, dim=-1).mean()
        for a, b in zip(pt, ft, strict=True)
    ]
    return torch.stack(cos).cpu().numpy().astype(np.float64)


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread for a single sentence: splitting a forward pass of a few dozen
    tokens over threads gains nothing, and on a busy machine the threads' synchronisation makes
    it an order of magnitude slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def encode_text(
    ws: Workspace, key: RunKey, text: str, units: list[str] | None = None
) -> TextActivations:
    """Run ``text`` through the run's PT and FT encoders (one forward each) and through the
    SAEs of ``units`` (default: every SAE of the run)."""
    outputs = ws.require(key, "finetune", "sae")
    units = list(outputs.sae_units) if units is None else units
    tokenizer = ws.tokenizer(key.model)
    pt_encoder, ft_encoder = ws.pt_encoder(key.model), ws.ft_encoder(key)
    saes = {unit: ws.sae(key, unit) for unit in units}

    with one_thread():
        return _encode(text, tokenizer, ws.max_length(key), pt_encoder, ft_encoder, saes)


def _encode(
    text: str, tokenizer: Any, max_length: int, pt_encoder: Any, ft_encoder: Any, saes: dict
) -> TextActivations:
    """The timed steps of :func:`encode_text`, once everything is loaded."""
    import torch

    timings: dict[str, float] = {}
    start = time.perf_counter()
    ids = check_text(text, tokenizer, max_length)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    timings["tokenize"] = time.perf_counter() - start
    states = {}
    for which, encoder in (("pt", pt_encoder), ("ft", ft_encoder)):
        start = time.perf_counter()
        states[which] = _hidden_states(encoder, ids)
        timings[which] = time.perf_counter() - start
    start = time.perf_counter()
    acts = {}
    with torch.inference_mode():
        for unit, sae in saes.items():
            hidden = states[unit[:2]][unit_layer(unit)]
            acts[unit] = sae.encode(hidden).cpu().numpy()
    timings["sae"] = time.perf_counter() - start
    start = time.perf_counter()
    cosine = _mean_cosine(states["pt"], states["ft"])
    timings["cosine"] = time.perf_counter() - start
    return TextActivations(text.strip(), tokens, acts, cosine, timings)
