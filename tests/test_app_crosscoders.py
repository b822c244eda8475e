"""Crosscoders in the explorer: the catalog finds a run's crosscoders, a layer's classes,
histogram and selectivities are the crosscoder stage's own, and a planted crosscoder (known
decoder norms, on the fixture tree's real paired store) gets its planted r and class by the
thresholds saved with it, on the card and on the page."""

from __future__ import annotations

import json

import numpy as np
import pytest
from app_support import (  # noqa: F401
    KEY,
    PLANTED_CLASSES,
    PLANTED_LAYER,
    PLANTED_NORMS,
    AppTree,
    app_tree,
    planted,
    planted_relative_norms,
    running_app,
)

from layerwise.app.catalog import ExplorerError, scan
from layerwise.app.crosscoders import SORTS, crosscoder_card, layer_diff, readout_params
from layerwise.app.loaders import Workspace


@pytest.fixture(scope="module")
def ws(app_tree: AppTree) -> Workspace:  # noqa: F811
    return Workspace(app_tree.root)


@pytest.fixture(scope="module")
def planted_ws(planted: AppTree) -> Workspace:  # noqa: F811
    return Workspace(planted.root)


def _stage_json(ws: Workspace) -> dict:
    return json.loads(ws.paths.crosscoder_json(KEY.model, KEY.task, KEY.seed).read_text())


def test_catalog_finds_the_runs_crosscoders(app_tree: AppTree, planted: AppTree) -> None:  # noqa: F811
    run = scan(app_tree.root).run(KEY)
    assert run.crosscoder_layers == (1, 2) and run.missing("crosscoder") == []
    only = scan(planted.root).run(KEY)
    assert only.crosscoder_layers == (PLANTED_LAYER,) and only.sae_units == ()
    assert only.missing("compare", "crosscoder", "sae") == ["sae"]


@pytest.mark.parametrize("layer", [1, 2])
def test_layer_matches_the_crosscoder_stage(ws: Workspace, layer: int) -> None:
    stage = _stage_json(ws)
    row = next(r for r in stage["layers"] if r["layer"] == layer)
    diff = layer_diff(ws, KEY, layer)
    assert diff.params.pt_only_below == stage["thresholds"]["pt_only_below"]
    assert diff.classes.alive.mean() == pytest.approx(row["alive_frac"])
    for name, value in diff.classes.fractions().items():
        assert value == pytest.approx(row[name], nan_ok=True), name
    counts, edges = diff.histogram()
    assert counts.tolist() == stage["hist"][str(layer)] and edges[[0, -1]].tolist() == [0, 1]
    shared = diff.classes.alive & (diff.classes.classes == "shared")
    mean_auc = float(diff.selectivity.auc[shared].mean())
    assert mean_auc == pytest.approx(row["selectivity_shared"])
    card = crosscoder_card(ws, KEY, layer, int(np.flatnonzero(shared)[0]))
    assert card.latent_class == "shared" and card.alive


def test_latent_list_is_sorted_by_r_and_holds_alive_latents_only(ws: Workspace) -> None:
    diff = layer_diff(ws, KEY, 2)
    rows = diff.rows(SORTS[0])
    assert len(rows) == int(diff.classes.alive.sum())
    r = [row["r"] for row in rows]
    assert r == sorted(r, reverse=True)
    assert [row["r"] for row in diff.rows(SORTS[1])] == sorted(r)
    assert [row["latent"] for row in diff.rows(SORTS[3])] == sorted(row["latent"] for row in rows)


def test_planted_crosscoder_card_has_the_planted_r_and_class(planted_ws: Workspace) -> None:
    params = readout_params(planted_ws, KEY, PLANTED_LAYER)
    # The crosscoder's own cfg.json wins over crosscoder.json's (default) thresholds.
    assert (params.pt_only_below, params.ft_only_above) == (0.2, 0.8)
    for latent, (norms, r, cls) in enumerate(
        zip(PLANTED_NORMS, planted_relative_norms(), PLANTED_CLASSES, strict=True)
    ):
        card = crosscoder_card(planted_ws, KEY, PLANTED_LAYER, latent, n_texts=3)
        assert card.relative_norm == pytest.approx(r, abs=1e-6)
        assert (card.norm_pt, card.norm_ft) == pytest.approx(norms, rel=1e-5)
        assert card.latent_class == card.norm_class == cls, latent
        assert card.alive and card.fire_rate == 1.0  # the bias makes it fire everywhere
        assert len(card.top_texts) == 3 and int(card.histogram[0].sum()) > 0
        for text in card.top_texts:
            assert len(text.tokens) == len(text.token_acts)
            assert text.token_acts.max() == pytest.approx(text.activation, abs=1e-5)
        assert 0 <= card.selectivity.auc <= 1
    diff = layer_diff(planted_ws, KEY, PLANTED_LAYER)
    assert np.histogram(planted_relative_norms(), bins=20, range=(0, 1))[0].tolist() == (
        diff.histogram()[0].tolist()
    )
    assert diff.classes.fractions()["ft_only_frac"] == pytest.approx(3 / 9)


def test_an_unknown_latent_or_layer_is_refused(planted_ws: Workspace) -> None:
    n = len(PLANTED_NORMS)
    with pytest.raises(ExplorerError, match=f"the crosscoder L1 has features 0..{n - 1}"):
        crosscoder_card(planted_ws, KEY, PLANTED_LAYER, n)
    with pytest.raises(ExplorerError, match="no crosscoder at layer 2; it has 1"):
        crosscoder_card(planted_ws, KEY, 2, 0)


def test_page_shows_the_planted_latents_and_card(planted: AppTree) -> None:  # noqa: F811
    with running_app(planted.root) as at:
        at.sidebar.radio(key="page").set_value("Crosscoders").run()
        assert not at.exception, at.exception
        assert at.selectbox(key="cc_layer").options == [str(PLANTED_LAYER)]
        assert at.get("vega_lite_chart")
        listed = at.dataframe[0].value
        order = np.argsort([-r for r in planted_relative_norms()], kind="stable")
        assert listed["latent"].tolist() == order.tolist()
        assert listed["class"].tolist() == [PLANTED_CLASSES[i] for i in order]
        assert listed["card"].iloc[0].endswith(f"cc_layer={PLANTED_LAYER}&latent={order[0]}")
        at.button(key="cc_pick_8").click().run()  # crosscoder.json's top FT-only latent
        assert not at.exception and not at.warning, [w.value for w in at.warning]
        assert at.subheader[0].value == f"crosscoder L1 · latent 8 of {len(PLANTED_NORMS)}"
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["relative norm r"] == "0.857" and metrics["class"] == "FT-only"
        assert [m.value for m in at.markdown if "<small>text " in m.value]
        at.text_input(key="latent").input("99").run()
        assert any("feature 99 does not exist" in w.value for w in at.warning)
