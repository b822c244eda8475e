"""Shared drawing helpers of the explorer's pages."""

from __future__ import annotations

import numpy as np
import pytest

from layerwise.app.widgets import parse_feature, token_html


def test_token_html_shades_by_activation_and_escapes_tokens() -> None:
    html = token_html(["[CLS]", "<b>", "##ing"], np.array([0.0, 2.0, 1.0]))
    assert html.count("<span") == 3
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert "rgba(214, 39, 40, 1.0)" in html and "rgba(214, 39, 40, 0.5)" in html
    assert "&lt;b&gt;</span><span" in html and ">ing</span>" in html  # "##ing" joins "<b>"
    assert token_html(["Ġgreat"], np.array([1.0])).count(">great</span>") == 1


def test_feature_ids_parse_or_fail_clearly() -> None:
    assert parse_feature(" 12 ") == 12 and parse_feature("") is None
    with pytest.raises(ValueError, match="not a whole number"):
        parse_feature("-1")
