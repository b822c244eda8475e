"""The explorer's cached, read-only loaders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from app_support import KEY, AppTree, app_tree  # noqa: F401

from layerwise.app.catalog import ExplorerError, RunKey
from layerwise.app.loaders import Workspace
from layerwise.paths import Paths


def test_objects_load_once_and_stores_index_their_texts(app_tree: AppTree) -> None:  # noqa: F811
    ws = Workspace(app_tree.root)
    assert ws.sae(KEY, "ft_L2") is ws.sae(KEY, "ft_L2")
    assert ws.pt_encoder(KEY.model) is ws.pt_encoder(KEY.model)
    assert ws.max_length(KEY) == 32
    index, analysis = ws.store_index(KEY), ws.analysis(KEY)
    assert ws.store(KEY).n_texts == len(analysis.texts)
    rows = index.rows_of(3)
    assert np.all(index.text_id[rows] == 3) and np.array_equal(
        index.position[rows], np.arange(len(rows))
    )
    assert analysis.label_names == ["negative", "positive"]


def test_missing_outputs_and_params_raise_what_to_do(app_tree: AppTree, tmp_path: Path) -> None:  # noqa: F811
    ws = Workspace(app_tree.root)
    with pytest.raises(ExplorerError, match="has no SAE 'ft_L7'; it has pt_L1, ft_L1"):
        ws.sae(KEY, "ft_L7")
    with pytest.raises(ExplorerError, match="no run"):
        ws.ft_encoder(RunKey("tiny", "kw", 5))
    no_params = Workspace(app_tree.root, params=tmp_path / "missing.yaml")
    with pytest.raises(ExplorerError, match=r"no params file at .*missing\.yaml"):
        no_params.model_source(KEY.model)
    (tmp_path / "other.yaml").write_text("models: {big: {source: x}}\n")
    with pytest.raises(ExplorerError, match=r"no models\.tiny\.source in other\.yaml .*big"):
        Workspace(app_tree.root, params=tmp_path / "other.yaml").model_source(KEY.model)


def test_a_capped_models_texts_are_its_stages_sample(app_tree: AppTree, tmp_path: Path) -> None:  # noqa: F811
    """A model that caps its analysis texts (models.<m>.max_analysis) is shown the very texts
    its compare stage stored, and a size model's source is found under size_models."""
    import yaml

    from layerwise.config import ModelDef
    from layerwise.data import model_splits
    from layerwise.paths import Paths

    raw = yaml.safe_load(app_tree.params.read_text())
    entry = raw["models"].pop(KEY.model)
    raw["size_models"] = {KEY.model: {**entry, "max_analysis": 7}}
    (tmp_path / "capped.yaml").write_text(yaml.safe_dump(raw))
    ws = Workspace(app_tree.root, params=tmp_path / "capped.yaml")
    assert ws.model_source(KEY.model) == entry["source"]
    texts = ws.analysis(KEY).texts
    model = ModelDef(source=entry["source"], layers=entry["layers"], max_analysis=7)
    expected = model_splits(Paths(app_tree.root).prepared(KEY.task), model, raw["seed"])
    assert len(texts) == 7 and texts == list(expected["analysis"]["text"])
    assert ws.catalog().run(KEY).key.size


def test_a_pt_store_of_other_tokens_is_an_explorer_message(
    app_tree: AppTree,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A shared PT store rewritten for other tokens (pt_store rerun with another budget, the
    run's compare not) is refused with what to rerun, as a page message, not a traceback."""
    root = tmp_path / "root"
    shutil.copytree(app_tree.root, root)
    index = Paths(root).pt_activations(KEY.model, KEY.task) / "analysis" / "index.npy"
    rows = np.load(index)
    rows[0, 2] += 1  # another token id in the first row
    np.save(index, rows)
    with pytest.raises(ExplorerError, match=r"holds other tokens .* rerun pt_store and compare"):
        Workspace(root).store(KEY)
