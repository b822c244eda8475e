"""Lazy, cached, read-only access to one root's pipeline outputs.

Loading is the slow part of every page (reading a model from disk, an SAE's pass over an
analysis store), so each object is loaded on first use and kept: the PT encoder and
tokenizer once per model (every task and seed shares them), the FT encoder, SAEs, stores and
splits once per run. The Streamlit app keeps one :class:`Workspace` per (root, params) for the
whole server, so every page after the first answers from memory, for every browser session.

Nothing here opens a file for writing: models load with ``from_pretrained``, stores as
read-only memmaps, prepared splits in memory (``datasets`` would otherwise write cache files
into a DVC output folder).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from layerwise.app.catalog import Catalog, ExplorerError, RunKey, RunOutputs, scan
from layerwise.errors import UserError
from layerwise.paths import Paths

if TYPE_CHECKING:
    from layerwise.activations import ActivationStore
    from layerwise.sae.crosscoder import Crosscoder
    from layerwise.sae.model import SparseAutoencoder

logger = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_MAX_LENGTH = 512
"""The input limit when neither a store nor params say (BERT's position table)."""


@dataclass(frozen=True)
class AnalysisTexts:
    """The run's analysis split: the texts behind the activation store's ``text_id``."""

    texts: list[str]
    labels: np.ndarray
    label_names: list[str]


@dataclass(frozen=True)
class StoreIndex:
    """Per row of the analysis store: its text, position in the text and vocabulary id. Rows
    are grouped by text, in position order (the compare stage writes them so)."""

    text_id: np.ndarray
    position: np.ndarray
    token_id: np.ndarray

    def rows_of(self, text_index: int) -> np.ndarray:
        """Row indices of one text, in position order."""
        start, stop = np.searchsorted(self.text_id, [text_index, text_index + 1])
        return np.arange(start, stop)


class Workspace:
    """The explorer's view of one repo root (``params`` defaults to ``<root>/params.yaml``).

    Every loader raises :class:`ExplorerError` naming the stage to run when its output is
    missing; :meth:`cached` memoises any derived object (the cards' SAE pass over a store).
    """

    def __init__(self, root: str | Path, params: str | Path | None = None) -> None:
        self.root = Path(root).resolve()
        self.paths = Paths(self.root)
        self.params_path = Path(params) if params else self.root / "params.yaml"
        self._cache: dict[tuple, Any] = {}
        # One loader at a time: two sessions asking for the same model load it once.
        self._lock = threading.RLock()

    def cached(self, key: tuple, make: Callable[[], T]) -> T:
        """``make()`` once per ``key``, then the same object."""
        with self._lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def catalog(self) -> Catalog:
        """What exists now (rescanned on every call: cheap, and a finished stage shows up
        without restarting the app). Without a readable params file the size models are
        unknown: their runs are still listed, with the full protocol's stage names."""
        try:
            size_models = list(self.model_defs("size_models"))
        except ExplorerError:
            size_models = []
        return scan(self.root, size_models)

    def outputs(self, key: RunKey) -> RunOutputs:
        return self.catalog().run(key)

    def require(self, key: RunKey, *stages: str) -> RunOutputs:
        """The run's outputs, or an error naming what to run for the missing ``stages``."""
        outputs = self.outputs(key)
        missing = outputs.missing(*stages)
        if missing:
            raise ExplorerError(outputs.hint(missing))
        return outputs

    # ---------------------------------------------------------------------------------------
    # Params and models

    def params(self) -> dict[str, Any]:
        """``params.yaml`` as plain data. Read, not validated: the explorer needs only each
        model's source and text caps, which models are size models, the data ``seed``,
        ``finetune.max_length`` and the MLflow experiment, and must still open outputs made
        under an older or newer params schema. Parsed as the stages parse it (YAML 1.2 floats)."""

        def load() -> dict[str, Any]:
            import yaml

            from layerwise.config import load_yaml

            if not self.params_path.is_file():
                raise ExplorerError(
                    f"no params file at {self.params_path}: the explorer reads each model's "
                    "pre-trained source from it (pass --params or set LAYERWISE_PARAMS)"
                )
            try:
                raw = load_yaml(self.params_path.read_text())
            except yaml.YAMLError as exc:
                raise ExplorerError(f"{self.params_path} is not valid YAML: {exc}") from exc
            return raw if isinstance(raw, dict) else {}

        return self.cached(("params",), load)

    def param(self, section: str, name: str, default: Any) -> Any:
        value = self.params().get(section)
        return value.get(name, default) if isinstance(value, dict) else default

    def model_defs(self, section: str) -> dict[str, dict[str, Any]]:
        """``models`` or ``size_models`` of params as plain dicts (``{}`` when absent)."""
        value = self.params().get(section) or {}
        return (
            {k: v for k, v in value.items() if isinstance(v, dict)}
            if isinstance(value, dict)
            else {}
        )

    def model_def(self, model: str) -> dict[str, Any]:
        """One model's params entry, from ``models`` or ``size_models`` (``{}``: neither)."""
        return (
            self.model_defs("models").get(model) or self.model_defs("size_models").get(model) or {}
        )

    def model_source(self, model: str) -> str:
        models = {**self.model_defs("models"), **self.model_defs("size_models")}
        source = self.model_def(model).get("source")
        if not source:
            raise ExplorerError(
                f"model {model!r} has outputs but no models.{model}.source in "
                f"{self.params_path.name} (models there: {', '.join(sorted(models)) or 'none'}): "
                "its pre-trained weights are unknown"
            )
        return str(source)

    def tokenizer(self, model: str) -> Any:
        """The pre-trained model's tokenizer (the compare stage tokenises with it)."""
        from layerwise.models import load_tokenizer

        return self.cached(("tokenizer", model), lambda: load_tokenizer(self.model_source(model)))

    def pt_encoder(self, model: str) -> Any:
        from layerwise.models import load_encoder

        return self.cached(("pt", model), lambda: load_encoder(self.model_source(model)))

    def ft_encoder(self, key: RunKey) -> Any:
        from layerwise.models import load_encoder

        self.require(key, "finetune")
        path = self.paths.finetuned(key.model, key.task, key.seed)
        return self.cached(("ft", key), lambda: load_encoder(str(path)))

    def sae(self, key: RunKey, unit: str) -> SparseAutoencoder:
        from layerwise.sae.model import load_sae

        outputs = self.require(key, "sae")
        if unit not in outputs.sae_units:
            raise ExplorerError(
                f"{key.label} has no SAE {unit!r}; it has {', '.join(outputs.sae_units)}"
            )
        path = self.paths.saes(key.model, key.task, key.seed) / unit
        return self.cached(("sae", key, unit), lambda: load_sae(path))

    def crosscoder_dir(self, key: RunKey, layer: int) -> Path:
        """The folder of the run's crosscoder at ``layer``, or an error naming the layers the
        run has (or the stage to run when it has none)."""
        outputs = self.require(key, "crosscoder")
        if layer not in outputs.crosscoder_layers:
            have = ", ".join(str(x) for x in outputs.crosscoder_layers)
            raise ExplorerError(f"{key.label} has no crosscoder at layer {layer}; it has {have}")
        return self.paths.crosscoders(key.model, key.task, key.seed) / f"L{layer}"

    def crosscoder(self, key: RunKey, layer: int) -> Crosscoder:
        from layerwise.sae.crosscoder import load_crosscoder

        path = self.crosscoder_dir(key, layer)
        return self.cached(("crosscoder", key, layer), lambda: load_crosscoder(path))

    def crosscoder_cfg(self, key: RunKey, layer: int) -> dict[str, Any]:
        """The crosscoder's ``cfg.json``: besides the architecture, the stage writes the
        ``params`` it was trained and read out with, so its class thresholds travel with it."""
        import json

        from layerwise.sae.crosscoder import CFG_FILENAME

        path = self.crosscoder_dir(key, layer) / CFG_FILENAME
        return self.cached(("crosscoder_cfg", key, layer), lambda: json.loads(path.read_text()))

    # ---------------------------------------------------------------------------------------
    # Data

    def max_length(self, key: RunKey) -> int:
        """The longest input the run's models saw: the store's ``max_length`` when there is a
        store, else ``finetune.max_length``."""
        configured = int(self.param("finetune", "max_length", DEFAULT_MAX_LENGTH))
        if self.outputs(key).store:
            return int(self.store(key).meta.get("max_length", configured))
        return configured

    def store(self, key: RunKey) -> ActivationStore:
        from layerwise.activations import ActivationStore

        self.require(key, "compare")
        root = self.paths.activations(key.model, key.task, key.seed)

        def load() -> ActivationStore:
            try:
                return ActivationStore.open(root, "analysis")
            except UserError as exc:  # a PT store of other tokens: say what to rerun
                raise ExplorerError(str(exc)) from exc

        return self.cached(("store", key), load)

    def store_index(self, key: RunKey) -> StoreIndex:
        def load() -> StoreIndex:
            store = self.store(key)
            return StoreIndex(*(store.column(c) for c in ("text_id", "position", "token_id")))

        return self.cached(("store_index", key), load)

    def analysis(self, key: RunKey) -> AnalysisTexts:
        from layerwise.data import cap_splits, load_splits

        cap, seed = self.model_def(key.model).get("max_analysis"), self.params().get("seed", 0)
        for name, value in (("max_analysis", cap), ("seed", seed)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ExplorerError(
                    f"{self.params_path.name}: {name}={value!r} is not an integer, so the texts "
                    f"of {key.param} cannot be matched to its activation store"
                )

        def load() -> AnalysisTexts:
            # The model's own sample, as its compare stage stored it (models.<m>.max_analysis).
            split = cap_splits(load_splits(self.paths.prepared(key.task)), {"analysis": cap}, seed)
            split = split["analysis"]
            return AnalysisTexts(
                texts=list(split["text"]),
                labels=np.asarray(split["label"]),
                label_names=list(split.features["label"].names),
            )

        self.require(key, "prepare")
        return self.cached(("analysis", key.task, cap), load)
