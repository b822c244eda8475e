"""Feature cards agree with the features stage (top texts, selectivity) and hold what a card
promises: token activations of every top text, a histogram of the firing tokens, a null for
the selectivity and the nearest latent of the other model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from app_support import KEY, AppTree, app_tree  # noqa: F401

from layerwise.app.cards import feature_card, selectivity_with_null, unit_index
from layerwise.app.catalog import ExplorerError
from layerwise.app.loaders import AnalysisTexts, Workspace


@pytest.fixture(scope="module")
def ws(app_tree: AppTree) -> Workspace:  # noqa: F811
    return Workspace(app_tree.root)


def test_card_matches_the_features_stage(ws: Workspace) -> None:
    stage = json.loads(ws.paths.features_json(KEY.model, KEY.task, KEY.seed).read_text())
    top = stage["units"]["ft_L2"]["top_features"][0]
    card = feature_card(ws, KEY, "ft_L2", top["feature"], n_texts=len(top["top_texts"]))
    assert [t.text_index for t in card.top_texts] == [t["text_index"] for t in top["top_texts"]]
    for shown, written in zip(card.top_texts, top["top_texts"], strict=True):
        assert shown.activation == pytest.approx(written["activation"], abs=1e-3)
        assert shown.label == written["label"]
        assert len(shown.tokens) == len(shown.token_acts)
        assert shown.token_acts.max() == pytest.approx(shown.activation, abs=1e-4)
    assert card.selectivity.auc == pytest.approx(top["selectivity_all"])
    assert card.fire_rate == pytest.approx(top["fire_rate"])


def test_card_histogram_null_and_neighbour(ws: Workspace) -> None:
    card = feature_card(ws, KEY, "pt_L1", 7)
    index = unit_index(ws, KEY, "pt_L1")
    firing = int(np.count_nonzero(index.column(7)))
    assert int(card.histogram[0].sum()) == firing == index.text_features.fire_count[7]
    sel = card.selectivity
    assert 0 < sel.p_value <= 1 and 0.5 <= sel.null_mean <= sel.null_q95 <= 1
    assert set(sel.auc_per_class) == {"negative", "positive"}
    other = ws.sae(KEY, "ft_L1").W_dec.detach().numpy()
    mine = index.decoder[7]
    cos = other @ mine / (np.linalg.norm(other, axis=1) * np.linalg.norm(mine))
    assert card.neighbour is not None and card.neighbour.unit == "ft_L1"
    assert card.neighbour.feature == int(cos.argmax())
    assert card.neighbour.cosine == pytest.approx(float(cos.max()), abs=1e-5)


def test_an_unknown_feature_id_is_refused(ws: Workspace) -> None:
    with pytest.raises(ExplorerError, match="feature 64 does not exist"):
        feature_card(ws, KEY, "ft_L1", 64)


def test_null_catches_a_label_detector_and_passes_noise() -> None:
    labels = np.repeat([0, 1], 50)
    analysis = AnalysisTexts([""] * 100, labels, ["a", "b"])
    detector = selectivity_with_null(labels * 2.0 + 0.01 * np.arange(100), analysis, seed=0)
    assert detector.auc == 1.0 and detector.best_label == "b" and detector.p_value < 0.01
    noise = np.random.default_rng(1).random(100)
    chance = selectivity_with_null(noise, analysis, seed=0)
    assert chance.p_value > 0.05 and chance.auc < chance.null_q95 + 0.1
