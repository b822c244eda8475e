"""Token maps, shared by the features and paper stages."""

from __future__ import annotations

from pathlib import Path

from paper_support import LABELS, features_result, png_size

from layerwise import plots

UNITS = ["pt_L2", "ft_L2", "pt_L4", "ft_L4", "pt_L6", "ft_L6"]


def test_plot_token_maps_writes_a_png_of_the_expected_size(tmp_path: Path) -> None:
    feats = features_result(6, [2, 4, 6], LABELS["sentiment"], "planted")
    out = tmp_path / "maps" / "sentiment.png"
    plots.plot_token_maps(feats["examples"], UNITS, out, "token maps", dpi=100)
    w, h = plots.token_map_figsize(len(feats["examples"]), len(UNITS))
    assert png_size(out) == (round(w * 100), round(h * 100))


def test_token_maps_tolerate_missing_units_and_empty_examples(tmp_path: Path) -> None:
    """A unit absent from an example is a blank row; an example without tokens still draws."""
    feats = features_result(6, [2, 4, 6], LABELS["sentiment"], "planted")
    ex = feats["examples"][0]
    del ex["maps"]["ft_L4"]
    empty = {"text_index": 9, "label": "positive", "text": "", "tokens": [], "maps": {}}
    out = tmp_path / "maps.png"
    plots.plot_token_maps([ex, empty], UNITS, out, "t", dpi=50)
    assert png_size(out)[0] == round(plots.TOKEN_MAP_WIDTH * 50)
    plots.plot_token_maps([], ["pt_L2"], tmp_path / "none.png", "t", dpi=50)
    assert (tmp_path / "none.png").stat().st_size > 0
