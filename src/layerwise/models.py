"""Load encoders, classifiers and tokenizers from any source; pick the device.

Every loader resolves the source first (``sources.resolve``) and then calls ``from_pretrained``
on a local folder, so package, hub and local models share one code path, and a model that does
not load fails with the source named and the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerwise.errors import UserError
from layerwise.sources import SourceError, resolve

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class ModelError(UserError):
    """A model source does not hold a usable model."""


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when available (or asked for), else CPU; nothing else assumes either."""
    import torch

    if prefer and prefer != "auto":
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX tiles, or AVX512-BF16 as on AMD Zen 4/5
    and Intel Cooper Lake): there bf16 matmuls run on oneDNN at 2-4x float32's speed. Other CPUs
    emulate bf16, which is slower than float32."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def cuda_has_native_bf16(device: Any) -> bool:
    """Whether the CUDA ``device`` (not merely the current one) multiplies bf16 in hardware:
    compute capability 8.0 (Ampere) or newer. ``torch.cuda.is_bf16_supported()`` also says yes
    for emulated bf16 on older cards (V100, T4), where it is slower than float32."""
    import torch

    major, _minor = torch.cuda.get_device_capability(torch.device(device))
    return major >= 8


def autocast_dtype(precision: str, device: Any) -> torch.dtype | None:
    """The mixed-precision dtype for training on ``device`` under a ``precision`` param
    (``auto`` | ``float32`` | ``bfloat16``); None means plain float32.

    ``auto`` is bfloat16 where the hardware multiplies it natively (:func:`cuda_has_native_bf16`,
    CPUs per :func:`cpu_has_fast_bf16`), float32 elsewhere: bf16 autocast keeps weights, optimizer
    state and reductions in float32, and it leaves results where float32 puts them (fine-tuned
    accuracy, SAE FVU) at about twice the speed.
    """
    import torch

    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if cuda_has_native_bf16(dev) else None
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def model_dir(source: str) -> Path:
    """The local folder of a model source (package, hub or path)."""
    path = resolve(source, kind="model")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelError(f"model source {source!r}: {path} is not a model folder (no config.json)")
    return path


def _load(source: str, what: str, fn) -> Any:
    path = model_dir(source)
    try:
        return fn(str(path))
    except SourceError:
        raise
    except Exception as exc:
        raise ModelError(
            f"model source {source!r} ({path}) does not load as a {what}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


def load_tokenizer(source: str) -> Any:
    """The source's tokenizer, with a padding token: decoder-only tokenizers (GPT-2, Llama)
    ship none, so batches pad with the end-of-text token. Padding is on the right: real tokens
    never attend to it (causal or masked attention), and the classifier finds the last real
    token from the padding id."""
    from transformers import AutoTokenizer

    tokenizer = _load(source, "tokenizer", AutoTokenizer.from_pretrained)
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelError(
                f"model source {source!r}: its tokenizer has no padding, end-of-text or unknown "
                "token to pad batches with"
            )
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "right"
    return tokenizer


def load_config(source: str) -> Any:
    from transformers import AutoConfig

    return _load(source, "config", AutoConfig.from_pretrained)


def load_encoder(source: str) -> Any:
    """The bare encoder (``AutoModel``): from a base model or from a fine-tuned classifier."""
    from transformers import AutoModel

    model = _load(source, "encoder", AutoModel.from_pretrained)
    model.eval()
    return model


def load_classifier(source: str, label_names: list[str] | None = None) -> Any:
    """A sequence classifier; a new (seeded) head when ``label_names`` are given for a base
    model, the saved head when the source is already a fine-tuned classifier."""
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {}
    if label_names is not None:
        kwargs = {
            "num_labels": len(label_names),
            "id2label": dict(enumerate(label_names)),
            "label2id": {n: i for i, n in enumerate(label_names)},
        }
    model = _load(
        source,
        "sequence classifier",
        lambda p: AutoModelForSequenceClassification.from_pretrained(p, **kwargs),
    )
    if model.config.pad_token_id is None:  # decoder-only: the classifier finds the last real
        model.config.pad_token_id = load_tokenizer(source).pad_token_id  # token by padding id
    return model


def num_layers(config: Any) -> int:
    """Transformer blocks L; ``hidden_states`` has L + 1 entries (0 = embeddings)."""
    return int(config.num_hidden_layers)


def max_positions(config: Any) -> int | None:
    return getattr(config, "max_position_embeddings", None)


def check_layers(layers: list[int], config: Any, key: str) -> None:
    """The architecture must be one whose blocks we can reach (:mod:`layerwise.architectures`)
    and layers must be in 0..L (0 = embedding output)."""
    from layerwise.architectures import layout_of
    from layerwise.config import ConfigError

    layout_of(config)

    n = num_layers(config)
    bad = [layer for layer in layers if not 0 <= layer <= n]
    if bad:
        raise ConfigError(
            f"{key}={layers}: layer(s) {bad} outside 0..{n} (L={n} for this model; "
            "0 is the embedding output)"
        )


def check_max_length(max_length: int, config: Any, tokenizer: Any, key: str) -> None:
    """The position table bounds the usable length (minus padding offset for RoBERTa-likes)."""
    from layerwise.config import ConfigError

    limit = max_positions(config)
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "mpnet") and limit:
        limit -= 2
    if limit is not None and max_length > limit:
        raise ConfigError(
            f"{key}={max_length} is above the model's position limit {limit} "
            f"({getattr(config, 'model_type', '?')})"
        )
