"""The explorer's cached, read-only loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from app_support import KEY, AppTree, app_tree  # noqa: F401

from layerwise.app.catalog import ExplorerError, RunKey
from layerwise.app.loaders import Workspace


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
