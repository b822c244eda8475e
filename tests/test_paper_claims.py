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
    fast, bottom-up ones late; the late crosscoder has more FT-only latents than the early one
    and the shuffled control's, late FT features beat their permutation null and the PT ones,
    and the late PT-FT dictionary overlap sits well below the PT-PT seed baseline."""
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
        ft_only={k: v + seed_jitter(n_seeds) for k, v in {2: 0.02, 4: 0.06, 6: 0.15}.items()},
        shuffled_ft_only={2: 0.02, 4: 0.025, 6: 0.03},
        selectivity_excess_pt={k: 0.01 + seed_jitter(n_seeds) for k in (2, 4, 6)},
        selectivity_excess_ft={
            k: v + seed_jitter(n_seeds) for k, v in {2: 0.01, 4: 0.05, 6: 0.12}.items()
        },
        overlap_rel={k: v + seed_jitter(n_seeds) for k, v in {2: 0.95, 4: 0.8, 6: 0.5}.items()},
    )


def seed_jitter(n_seeds: int) -> np.ndarray:
    """Small per-seed differences, so seed intervals are narrow but not empty."""
    return 0.004 * np.arange(n_seeds)


SHUFFLED_EXCESS = {2: 0.004, 4: -0.002, 6: 0.003}
"""Selectivity excess of a fine-tune without the task: its features sit at the permutation
null (what the shuffled control's crosscoder measures for its FT-only latents)."""


def as_shuffled(inp: C.ClaimInputs) -> C.ClaimInputs:
    """The shuffled-label control in the fine-tune's place: its curve and FT-only fractions are
    the control's own, its features sit at the null; it has no gain over the majority class,
    so every lost gain is undefined (NaN), and no sae_baseline run exists for it (NaN)."""
    n = inp.cosine.shape[0]
    nan = np.full((n, L + 1), math.nan)
    return dataclasses.replace(
        inp,
        cosine=np.repeat(inp.shuffled[None, :], n, axis=0),
        lost_gain={"bottom_up": nan, "top_down": nan},
        reset_depth={"bottom_up": np.full(n, math.nan), "top_down": np.full(n, math.nan)},
        ft_only={k: np.full(n, v) for k, v in inp.shuffled_ft_only.items()},
        selectivity_excess_ft={k: v + seed_jitter(n) for k, v in SHUFFLED_EXCESS.items()},
        overlap_rel={k: np.full(n, math.nan) for k in inp.sae_layers},
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
    c1, c2, c3 = C.evaluate(as_shuffled(planted()), PARAMS)
    assert c3.verdict == C.FAILS and not any(c3.checks.values())
    assert c3.effects["ft_only_late_minus_shuffled"].mean == pytest.approx(0.0)
    assert "cannot be judged" in c3.evidence
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
    c1, c2, c3 = C.evaluate(planted(n_seeds=1), PARAMS)
    assert math.isnan(c1.effects["late_below_shuffled"].lo)
    assert not c1.checks["late_below_shuffled"] and c1.verdict == C.PARTLY
    assert not c2.checks["a_similarity_transition_in_middle"] and c2.verdict == C.PARTLY
    # C3 measures its effects but cannot judge them: no seed interval, no seed baseline.
    assert c3.numbers["ft_only_late_minus_shuffled"] == pytest.approx(0.12)
    assert c3.verdict == C.FAILS and "cannot be judged" in c3.evidence


def test_thresholds_are_parameters_written_into_the_rules() -> None:
    strict = dataclasses.replace(PARAMS, reset_small=0.05, reset_large=0.95)
    c1 = C.check_c1(planted(), strict)
    assert not c1.checks["early_reset_costs_little"] and not c1.checks["late_reset_costs_most"]
    assert c1.verdict == C.FAILS
    rules = C.rules(strict)
    assert "0.05" in rules["C1"] and "0.95" in rules["C1"]
    c3_strict = dataclasses.replace(
        PARAMS, ft_only_margin=0.2, selectivity_margin=0.5, overlap_rel_max=0.3
    )
    assert C.check_c3(planted(), c3_strict).verdict == C.FAILS
    rule = C.rules(c3_strict)["C3"]
    assert "at least 0.2 " in rule and "at least 0.5 " in rule and "below 0.3 " in rule
    assert "calibrated" not in rule.lower()


def test_c3_holds_partly_or_not_by_its_three_parts() -> None:
    inp = planted()
    c3 = C.check_c3(inp, PARAMS)
    assert c3.verdict == C.HOLDS and all(c3.checks.values())
    assert c3.effects["ft_only_late_minus_early"].mean == pytest.approx(0.13)
    assert c3.effects["overlap_rel_late"].hi < 1
    assert c3.numbers["shuffled_ft_only_late"] == 0.03
    # (a) alone fails: the control gains as many FT-only latents as the fine-tune.
    busy_control = dataclasses.replace(inp, shuffled_ft_only={2: 0.02, 4: 0.1, 6: 0.15})
    c3 = C.check_c3(busy_control, PARAMS)
    assert c3.verdict == C.PARTLY and not c3.checks["a_ft_only_late_above_shuffled"]
    assert c3.checks["a_ft_only_late_above_early"]
    # (b) alone fails: the PT features are as selective beyond chance as the FT ones.
    pt_alike = dataclasses.replace(inp, selectivity_excess_pt=inp.selectivity_excess_ft)
    c3 = C.check_c3(pt_alike, PARAMS)
    assert c3.verdict == C.PARTLY and not c3.checks["b_ft_selectivity_above_pt"]
    # (c) alone fails: the dictionary moved no more than another SAE seed moves it.
    seed_noise = dataclasses.replace(inp, overlap_rel={6: np.array([0.97, 1.0, 1.02])})
    c3 = C.check_c3(seed_noise, PARAMS)
    assert c3.verdict == C.PARTLY and not c3.checks["c_overlap_below_seed_baseline"]


def test_c3_does_not_hold_when_the_late_layer_is_like_the_early_one() -> None:
    """A fine-tune whose late layer is no more diffed, selective or changed than its early one
    (flat numbers everywhere): no part of C3 holds."""
    inp = planted()
    flat = {k: np.array([0.03, 0.031, 0.029]) for k in inp.sae_layers}
    null = {k: np.array([0.002, -0.003, 0.001]) for k in inp.sae_layers}
    unchanged = dataclasses.replace(
        inp,
        ft_only=flat,
        shuffled_ft_only={k: 0.03 for k in inp.sae_layers},
        selectivity_excess_ft=null,
        selectivity_excess_pt=null,
        overlap_rel={k: np.array([0.98, 1.01, 0.99]) for k in inp.sae_layers},
    )
    c3 = C.check_c3(unchanged, PARAMS)
    assert c3.verdict == C.FAILS and not any(c3.checks.values())
    with pytest.raises(ValueError, match="no ft_only for SAE layer"):
        C.check_c3(dataclasses.replace(inp, ft_only={2: flat[2]}), PARAMS)


def test_claims_metrics_are_numbers_with_stable_keys() -> None:
    metrics = C.claims_metrics(C.evaluate(planted(), PARAMS))
    assert metrics["claims/m/t/C1"] == 1.0 and metrics["claims/holds"] == 3.0
    assert "claims/m/t/late_below_shuffled_lo" in metrics
    assert all(isinstance(v, float) for v in metrics.values())
    assert list(metrics) == sorted(metrics)
