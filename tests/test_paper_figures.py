"""Figure helpers: which units a token map shows, figure sizes, seed-mean curves."""

from __future__ import annotations

import numpy as np
import pytest

from layerwise.paper import figures


def test_token_map_units_are_early_middle_late_pt_then_ft() -> None:
    units = figures.token_map_units([2, 4, 6])
    assert units == ["pt_L2", "ft_L2", "pt_L4", "ft_L4", "pt_L6", "ft_L6"]
    assert figures.token_map_units([6, 2]) == ["pt_L2", "ft_L2", "pt_L6", "ft_L6"]


def test_figure_size_grows_with_models_and_rejects_unknown_names() -> None:
    assert figures.figure_size("layerwise_similarity", 2, 3) == pytest.approx((12.6, 13.6))
    assert figures.figure_size("layer_reset", 1, 1) == (6.0, 3.6)
    assert figures.figure_size("crosscoder_norms", 1, 2, n_layers=4) == pytest.approx((13.6, 5.4))
    with pytest.raises(KeyError, match="unknown figure"):
        figures.figure_size("nope", 1, 1)


def test_mean_curve_averages_seeds_where_the_column_has_values() -> None:
    nan = np.nan
    a = {"step": np.array([1.0, 2.0, 2.0]), "loss": np.array([1.0, 0.5, nan])}
    b = {"step": np.array([1.0, 2.0]), "loss": np.array([3.0, nan])}
    xs, mean, std = figures.mean_curve([a, b], "step", "loss")
    assert xs.tolist() == [1.0, 2.0]
    assert mean.tolist() == [2.0, 0.5]
    assert std[0] == pytest.approx(np.sqrt(2.0)) and np.isnan(std[1])
