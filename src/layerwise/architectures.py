"""Where each supported architecture keeps its embeddings and its transformer blocks.

This is the one place that names an architecture's module attributes: every intervention (SAE
splicing, layer reset, any forward hook) asks :func:`hidden_state_module` or :func:`block_list`
instead of reaching into ``encoder.layer`` itself, so adding a family is one entry in
:data:`LAYOUTS`.

Hidden state ``k`` (``output_hidden_states=True``) is the output of the embedding module for
``k = 0`` and of block ``k`` for ``1 <= k <= L``. Models with a final norm that Hugging Face
applies to the last ``hidden_states`` entry (Llama-style decoders, ModernBERT, GPT-2) report the
*normed* state at ``k = L``; the hook for ``k = L`` then sits on the norm module, so a splice at
``L`` replaces exactly what ``hidden_states[L]`` reports.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from layerwise.errors import UserError


class ArchitectureError(UserError):
    """A model whose blocks this package does not know how to reach."""


@dataclass(frozen=True)
class Layout:
    """Dotted attribute paths inside a family's base model (``model.base_model``)."""

    embeddings: str
    """The module whose output is ``hidden_states[0]``; ``a|b``: ``a`` where the model has it
    (ELECTRA projects its embeddings when they are narrower than the blocks), else ``b``."""
    blocks: str
    """The ``ModuleList`` of transformer blocks, in order."""
    final_norm: str | None = None
    """A norm applied to the last block's output before it is reported as ``hidden_states[L]``."""
    decoder: bool = False
    """Decoder-only (causal): its classifier reads the last non-padding token."""
    shared_blocks: bool = False
    """Blocks share weights (ALBERT): they cannot be reset or spliced one at a time."""


_ENCODER = Layout(embeddings="embeddings", blocks="encoder.layer")
_LLAMA = Layout(embeddings="embed_tokens", blocks="layers", final_norm="norm", decoder=True)

LAYOUTS: dict[str, Layout] = {
    "bert": _ENCODER,
    "roberta": _ENCODER,
    "xlm-roberta": _ENCODER,
    "electra": Layout(embeddings="embeddings_project|embeddings", blocks="encoder.layer"),
    "mpnet": _ENCODER,
    "distilbert": Layout(embeddings="embeddings", blocks="transformer.layer"),
    "modernbert": Layout(embeddings="embeddings", blocks="layers", final_norm="final_norm"),
    "gpt2": Layout(embeddings="drop", blocks="h", final_norm="ln_f", decoder=True),
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
}
"""model_type -> layout. ``hidden_states[0]`` of GPT-2 is the dropout over token + position
embeddings, so its embedding hook sits on ``drop``."""

UNSUPPORTED: dict[str, str] = {
    "albert": "its blocks share one set of weights, so no single block can be reset or spliced",
}


def supported_types() -> list[str]:
    """Every ``model_type`` the pipeline runs end to end, sorted."""
    return sorted(LAYOUTS)


def layout_of(config: Any) -> Layout:
    """The layout of a model's config; one clear error for anything else, before any work."""
    model_type = getattr(config, "model_type", None)
    if model_type in LAYOUTS:
        return LAYOUTS[model_type]
    name = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    why = UNSUPPORTED.get(model_type, "no layout of its blocks is known")
    raise ArchitectureError(
        f"model {name} (model_type {model_type!r}) is not supported: {why}; "
        f"supported model types: {', '.join(supported_types())}"
    )


def _base(model: Any) -> Any:
    """The bare transformer inside a classifier (or the model itself when it is bare)."""
    return getattr(model, "base_model", model)


def block_list(model: Any) -> list[Any]:
    """The model's transformer blocks in order: block ``k`` (1-based) makes hidden state ``k``."""
    layout = layout_of(model.config)
    return list(operator.attrgetter(layout.blocks)(_base(model)))


def embedding_module(model: Any) -> Any:
    """The module whose output is ``hidden_states[0]``."""
    base = _base(model)
    *preferred, fallback = layout_of(model.config).embeddings.split("|")
    for path in preferred:
        try:
            return operator.attrgetter(path)(base)
        except AttributeError:
            continue
    return operator.attrgetter(fallback)(base)


def hidden_state_module(model: Any, layer: int) -> Any:
    """The module whose forward output is ``hidden_states[layer]`` (0 = embeddings)."""
    layout = layout_of(model.config)
    blocks = block_list(model)
    if not 0 <= layer <= len(blocks):
        raise ArchitectureError(f"layer {layer} outside 0..{len(blocks)} for this model")
    if layer == 0:
        return embedding_module(model)
    if layer == len(blocks) and layout.final_norm is not None:
        return operator.attrgetter(layout.final_norm)(_base(model))
    return blocks[layer - 1]


def is_decoder(config: Any) -> bool:
    """Whether the family is decoder-only (its classifier pools the last real token)."""
    return layout_of(config).decoder


def probe_pooling(pooling: str, config: Any) -> str:
    """The pooling a ``pooling`` param means for this model: ``auto`` is the last real token
    for decoder-only models (their classifier reads it; earlier tokens never see later ones)
    and the token mean for encoders (the paper's mean-pooled sentences)."""
    if pooling != "auto":
        return pooling
    return "last" if is_decoder(config) else "mean"
