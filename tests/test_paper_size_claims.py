"""The one-seed C1/C2 rules against the shuffled-label control: they hold on a planted case and
fail on constructed cases (a control that moved as much as the task, an early layer that moved
beyond the control, a transition outside the middle)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerwise.config import PaperParams
from layerwise.paper.claims import FAILS, HOLDS, PARTLY
from layerwise.paper.size_claims import SizeClaimInputs, check_c1, check_c2, transition

L = 12
LAYERS = np.arange(L + 1)
DEPTH = LAYERS / L
HALF = 0.004  # text half-width of every cosine


def planted(d: np.ndarray) -> np.ndarray:
    """PT-FT cosine falling steeply around depth 0.5."""
    return 0.999 - 0.5 / (1.0 + np.exp(-12 * (d - 0.5)))


def make(cosine: np.ndarray, shuffled: np.ndarray, half: float = HALF) -> SizeClaimInputs:
    return SizeClaimInputs(
        model="big",
        task="sentiment",
        seed=0,
        layers=LAYERS,
        sae_layers=[3, 6, 12],
        cosine=cosine,
        cosine_lo=cosine - half,
        cosine_hi=cosine + half,
        shuffled=shuffled,
        shuffled_lo=shuffled - half,
        shuffled_hi=shuffled + half,
    )


MILD = 0.999 - 0.1 * DEPTH  # the shuffled control: a mild fall


def test_planted_task_holds() -> None:
    inp = make(planted(DEPTH), MILD)
    c1, c2 = check_c1(inp), check_c2(inp, PaperParams())
    assert c1.verdict == HOLDS and c2.verdict == HOLDS
    assert c1.numbers["gap_late_lo"] > 0 and c1.numbers["gap_early_lo"] <= 0
    assert c1.control.startswith("shuffled-label fine-tune, one seed")
    assert 0.4 < transition(inp)[0] < 0.6


def test_control_that_moved_as_much_as_the_task_fails_the_late_part() -> None:
    """The shuffled-label fine-tune fell just as far: 'the task moved the late layer' is not
    shown (the mere fall of the curve is not evidence)."""
    inp = make(planted(DEPTH), planted(DEPTH))
    c1 = check_c1(inp)
    assert c1.verdict == PARTLY
    assert c1.checks == {"early_not_beyond_shuffled": True, "late_beyond_shuffled": False}
    assert check_c2(inp, PaperParams()).verdict == FAILS  # no gap opens anywhere


def test_early_layer_moved_beyond_the_control_fails_the_early_part() -> None:
    cosine = planted(DEPTH)
    cosine[3] = MILD[3] - 0.05
    c1 = check_c1(make(cosine, MILD))
    assert c1.checks["early_not_beyond_shuffled"] is False and c1.verdict == PARTLY


def test_nothing_beyond_the_control_does_not_hold() -> None:
    """Both parts fail: the early layer moved beyond the control and the late one did not."""
    cosine = MILD.copy()
    cosine[3] -= 0.05
    assert check_c1(make(cosine, MILD)).verdict == FAILS


def test_wide_text_intervals_do_not_count_as_evidence() -> None:
    """A late gap of 0.02 with text intervals of +-0.02 is not beyond the control."""
    cosine = MILD - 0.02 * (DEPTH > 0.9)
    assert check_c1(make(cosine, MILD, half=0.02)).checks["late_beyond_shuffled"] is False
    assert check_c1(make(cosine, MILD, half=0.002)).checks["late_beyond_shuffled"] is True


@pytest.mark.parametrize("centre", [0.15, 0.9])
def test_transition_outside_the_middle_fails(centre: float) -> None:
    cosine = 0.999 - 0.5 / (1.0 + np.exp(-40 * (DEPTH - centre)))
    c2 = check_c2(make(cosine, MILD), PaperParams())
    assert c2.verdict == FAILS
    assert not (1 / 3 <= c2.numbers["transition_depth"] <= 2 / 3)
    assert math.isnan(c2.numbers["transition_depth_lo"])  # one seed: no interval


def test_undefined_steps_do_not_hold_and_do_not_crash() -> None:
    """A curve without a single finite step (e.g. a NaN control) gives no transition."""
    inp = make(planted(DEPTH), np.full(L + 1, np.nan))
    assert all(math.isnan(v) for v in transition(inp))
    assert check_c2(inp, PaperParams()).verdict == FAILS
