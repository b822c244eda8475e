"""A typed sentence through the run's encoders and SAEs: one value per token, the same hidden
states the compare stage stored (``hidden_states[k]``, k = 0 the embeddings), clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from app_support import KEY, SENTENCE, AppTree, app_tree  # noqa: F401

from layerwise.app.catalog import ExplorerError
from layerwise.app.encode import encode_text
from layerwise.app.loaders import Workspace


@pytest.fixture(scope="module")
def ws(app_tree: AppTree) -> Workspace:  # noqa: F811
    return Workspace(app_tree.root)


def test_every_unit_gives_one_activation_row_per_token(ws: Workspace) -> None:
    acts = encode_text(ws, KEY, SENTENCE)
    assert acts.tokens[0] == "[CLS]" and acts.tokens[-1] == "[SEP]"
    assert "great" in acts.tokens and "awful" in acts.tokens
    assert set(acts.units) == {"pt_L1", "ft_L1", "pt_L2", "ft_L2"}
    for values in acts.units.values():
        assert values.shape == (len(acts.tokens), 64) and (values >= 0).all()
    assert acts.cosine.shape == (3,)  # layers 0..2 of the 2-block model
    assert np.all(acts.cosine <= 1 + 1e-6) and acts.cosine[0] > 0.9  # FT barely moves embeddings
    feature, peak, position = acts.top_features("ft_L2", 1)[0]
    assert acts.feature("ft_L2", feature)[position] == pytest.approx(peak)
    assert set(acts.timings) == {"tokenize", "pt", "ft", "sae", "cosine"}


def test_a_stored_text_gives_the_stored_activations(ws: Workspace) -> None:
    """The SAE codes of an analysis text typed in equal the codes of its stored rows: same
    tokenizer, same models, same hidden-state index (k = 0 is the embeddings)."""
    text_index = 4
    rows = ws.store_index(KEY).rows_of(text_index)
    acts = encode_text(ws, KEY, ws.analysis(KEY).texts[text_index])
    assert len(rows) == len(acts.tokens)
    for unit in ("pt_L1", "ft_L2"):
        stored = np.asarray(ws.store(KEY).acts(unit)[rows], dtype=np.float32)
        with torch.no_grad():
            expected = ws.sae(KEY, unit).encode(torch.from_numpy(stored)).numpy()
        np.testing.assert_allclose(acts.units[unit], expected, atol=0.05)  # stores are float16


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("   ", "the text is empty"),
        ("great " * 40, "42 tokens long, above this run's max_length of 32"),
    ],
)
def test_bad_text_gets_a_clear_message(ws: Workspace, text: str, message: str) -> None:
    with pytest.raises(ExplorerError, match=message):
        encode_text(ws, KEY, text)


def test_an_unknown_feature_names_the_valid_range(ws: Workspace) -> None:
    acts = encode_text(ws, KEY, SENTENCE, units=["pt_L2"])
    assert list(acts.units) == ["pt_L2"]
    with pytest.raises(ExplorerError, match=r"feature 64 does not exist: .* features 0\.\.63"):
        acts.feature("pt_L2", 64)
