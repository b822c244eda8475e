"""The claim rules: each verdict can be reached, each compares the fine-tune with a control,
and the shuffled-label control put in the fine-tune's place fails the task-specific parts."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from layerwise.config import PaperParams
from layerwise.paper import claims as C

L = 6
DEPTH = np.arange(L + 1) / L
PARAMS = PaperParams()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def planted(n_seeds: int = 3) -> C.ClaimInputs:
    """A fine-tune that satisfies every rule: PT-FT cosine inside the seed band early, a steep
    fall in the middle, far below the band and the shuffled control late; top-down resets cost
    fast, bottom-up ones late; late SAE features specialise."""
    cosine = 0.999 - 0.5 * sigmoid(12 * (DEPTH - 0.5))
    k = np.arange(L + 1) / L
    jitter = 0.01 * np.arange(n_seeds)[:, None]
    lost_bu = np.clip(sigmoid(12 * (k - 0.5)) + jitter, 0, None)
    lost_td = np.clip(sigmoid(12 * (k - 0.2)) + jitter, 0, None)
    lost_bu[:, 0] = lost_td[:, 0] = 0.0
    return C.ClaimInputs(
        model="m",
        task="t",
        layers=np.arange(L + 1),
        cosine=cosine[None, :] - 0.002 * np.arange(n_seeds)[:, None],
        floor_min=0.999 - 0.08 * DEPTH - 0.04,
        floor_mean=0.999 - 0.08 * DEPTH,
        shuffled=0.999 - 0.15 * DEPTH,
        lost_gain={"bottom_up": lost_bu, "top_down": lost_td},
        reset_depth={"bottom_up": np.full(n_seeds, 0.5), "top_down": np.full(n_seeds, 1 / 3)},
        sae_layers=[2, 4, 6],
        selectivity_top_pt={2: 0.6, 4: 0.6, 6: 0.6},
        selectivity_top_ft={2: 0.6, 4: 0.7, 6: 0.9},
        mmcs={2: 0.9, 4: 0.7, 6: 0.4},
    )


def as_shuffled(inp: C.ClaimInputs) -> C.ClaimInputs:
    """The shuffled-label control in the fine-tune's place: its curve is the control's own,
    and it has no gain over the majority class, so every lost gain is undefined (NaN)."""
    n = inp.cosine.shape[0]
    nan = np.full((n, L + 1), math.nan)
    return dataclasses.replace(
        inp,
        cosine=np.repeat(inp.shuffled[None, :], n, axis=0),
        lost_gain={"bottom_up": nan, "top_down": nan},
        reset_depth={"bottom_up": np.full(n, math.nan), "top_down": np.full(n, math.nan)},
    )


def test_rules_hold_on_a_constructed_case_that_satisfies_them() -> None:
    results = C.evaluate(planted(), PARAMS)
    assert [r.verdict for r in results] == [C.HOLDS] * 3
    c1, c2 = results[0], results[1]
    assert all(c1.checks.values()) and all(c2.checks.values())
    assert c1.effects["late_below_shuffled"].lo > 0  # the effect size and its seed interval
    assert c1.numbers["late_below_band"] == pytest.approx(0.999 - 0.08 - 0.04 - 0.4988, abs=0.01)
    assert c2.effects["reset_transition_depth"].mean == pytest.approx((0.5 + 2 / 3) / 2)
    assert c1.control == C.CONTROLS["C1"] and "shuffled" in c1.control


def test_shuffled_control_in_place_of_the_fine_tune_fails_the_task_specific_parts() -> None:
    c1, c2, _ = C.evaluate(as_shuffled(planted()), PARAMS)
    assert not c1.checks["late_below_shuffled"]
    assert not c1.checks["late_reset_costs_most"] and not c1.checks["early_reset_costs_little"]
    assert c1.verdict == C.FAILS
    assert not c2.checks["b_reset_transition_in_middle"]
    assert c2.verdict != C.HOLDS


def test_each_c1_part_can_fail_alone() -> None:
    inp = planted()
    # The late layer is no lower than training without the task: the late part fails.
    no_task = dataclasses.replace(inp, shuffled=inp.cosine.mean(axis=0))
    c1 = C.check_c1(no_task, PARAMS)
    assert c1.verdict == C.PARTLY and not c1.checks["late_below_shuffled"]
    # Resetting the early blocks costs most of the gain: the early part fails.
    costly = {**inp.lost_gain, "bottom_up": np.full_like(inp.lost_gain["bottom_up"], 0.9)}
    c1 = C.check_c1(dataclasses.replace(inp, lost_gain=costly), PARAMS)
    assert c1.verdict == C.PARTLY and not c1.checks["early_reset_costs_little"]
    # Both: does not hold. The early layer below the seed band as well.
    both = dataclasses.replace(no_task, lost_gain=costly, floor_min=np.ones(L + 1))
    assert C.check_c1(both, PARAMS).verdict == C.FAILS


def test_c2_fails_when_the_transitions_are_not_in_the_middle() -> None:
    inp = planted()
    early_fall = 0.999 - 0.5 * sigmoid(12 * (DEPTH - 0.1))
    moved = dataclasses.replace(
        inp,
        cosine=np.repeat(early_fall[None, :], 3, axis=0),
        reset_depth={"bottom_up": np.full(3, 1.0), "top_down": np.full(3, 0.0)},
    )
    c2 = C.check_c2(moved, PARAMS)
    assert c2.verdict == C.FAILS and c2.effects["transition_depth"].mean < PARAMS.middle_lo
    narrower = dataclasses.replace(PARAMS, middle_lo=0.45, middle_hi=0.55)
    assert C.check_c2(inp, narrower).verdict == C.FAILS  # the band is a parameter
    assert "[0.45, 0.55]" in C.rules(narrower)["C2"]


def test_one_seed_gives_no_seed_interval_so_interval_checks_fail() -> None:
    c1, c2, _ = C.evaluate(planted(n_seeds=1), PARAMS)
    assert math.isnan(c1.effects["late_below_shuffled"].lo)
    assert not c1.checks["late_below_shuffled"] and c1.verdict == C.PARTLY
    assert not c2.checks["a_similarity_transition_in_middle"] and c2.verdict == C.PARTLY


def test_thresholds_are_parameters_written_into_the_rules() -> None:
    strict = dataclasses.replace(PARAMS, reset_small=0.05, reset_large=0.95)
    c1 = C.check_c1(planted(), strict)
    assert not c1.checks["early_reset_costs_little"] and not c1.checks["late_reset_costs_most"]
    assert c1.verdict == C.FAILS
    rules = C.rules(strict)
    assert "0.05" in rules["C1"] and "0.95" in rules["C1"]
    assert "not yet calibrated" in rules["C3"].lower()


def test_c3_counts_checks() -> None:
    inp = planted()
    one_check = dataclasses.replace(
        inp, selectivity_top_ft={2: 0.9, 4: 0.6, 6: 0.5}, mmcs={2: 0.4, 6: 0.3}
    )
    result = C.check_c3(one_check)
    assert sum(result.checks.values()) == 1 and result.verdict == C.PARTLY
    unchanged = dataclasses.replace(
        inp, selectivity_top_ft=inp.selectivity_top_pt, mmcs={2: 0.8, 4: 0.8, 6: 0.8}
    )
    assert C.check_c3(unchanged).verdict == C.FAILS


def test_claims_metrics_are_numbers_with_stable_keys() -> None:
    metrics = C.claims_metrics(C.evaluate(planted(), PARAMS))
    assert metrics["claims/m/t/C1"] == 1.0 and metrics["claims/holds"] == 3.0
    assert "claims/m/t/late_below_shuffled_lo" in metrics
    assert all(isinstance(v, float) for v in metrics.values())
    assert list(metrics) == sorted(metrics)
