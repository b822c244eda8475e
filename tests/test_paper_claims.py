"""The claim rules: each verdict can be reached, and the threshold is a parameter."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from layerwise.paper import claims as C


def claim_inputs(cosine: np.ndarray, half: float, mmcs: tuple[float, float] = (0.9, 0.4)):
    layers = np.arange(len(cosine))
    return C.ClaimInputs(
        model="m",
        task="t",
        layers=layers,
        cosine=cosine,
        cosine_lo=cosine - half,
        cosine_hi=cosine + half,
        cka=cosine,
        sae_layers=[2, 4, 6],
        selectivity_top_pt={2: 0.6, 4: 0.6, 6: 0.6},
        selectivity_top_ft={2: 0.6, 4: 0.7, 6: 0.9},
        mmcs={2: mmcs[0], 4: 0.7, 6: mmcs[1]},
    )


def test_rules_hold_on_planted_monotone_curve_with_separated_cis() -> None:
    inp = claim_inputs(np.linspace(1.0, 0.4, 7), half=0.01)
    results = C.evaluate(inp, rho_threshold=-0.8)
    assert [r.verdict for r in results] == [C.HOLDS] * 3
    assert results[0].numbers["rho_cosine"] == pytest.approx(-1.0)


def test_rules_do_not_hold_on_flat_curve() -> None:
    flat = claim_inputs(np.full(7, 0.9), half=0.02, mmcs=(0.8, 0.8))
    flat = dataclasses.replace(flat, selectivity_top_ft=flat.selectivity_top_pt)
    results = C.evaluate(flat, rho_threshold=-0.8)
    assert [r.verdict for r in results] == [C.FAILS] * 3
    assert np.isnan(results[0].numbers["rho_cosine"])


def test_rules_partly_and_threshold_is_a_parameter() -> None:
    """A falling curve with overlapping CIs is 'partly' for C1 and C2; with separated CIs the
    same curve holds or is only 'partly' depending on rho_threshold alone."""
    noisy = claim_inputs(np.array([0.95, 0.96, 0.94, 0.93, 0.90, 0.91, 0.89]), half=0.05)
    c1 = C.check_c1(noisy, rho_threshold=-0.8)
    assert c1.verdict == C.PARTLY and c1.checks["rho_below_threshold"]
    assert C.check_c2(noisy).verdict == C.PARTLY
    assert C.check_c1(noisy, rho_threshold=-0.99).verdict == C.PARTLY  # rho < 0 only
    separated = claim_inputs(np.array([0.95, 0.96, 0.94, 0.93, 0.90, 0.91, 0.89]), half=0.001)
    assert C.check_c1(separated, rho_threshold=-0.8).verdict == C.HOLDS
    assert C.check_c1(separated, rho_threshold=-0.99).verdict == C.PARTLY  # threshold decides
    assert "-0.8" in C.rules(-0.8)["C1"] and "-0.5" in C.rules(-0.5)["C1"]


def test_c2_needs_three_sae_layers_and_c3_counts_checks() -> None:
    inp = claim_inputs(np.linspace(1.0, 0.4, 7), half=0.01)
    two = dataclasses.replace(inp, sae_layers=[2, 6])
    assert C.check_c2(two).verdict == C.FAILS
    one_check = dataclasses.replace(
        inp, selectivity_top_ft={2: 0.9, 4: 0.6, 6: 0.5}, mmcs={2: 0.4, 6: 0.3}
    )
    result = C.check_c3(one_check)
    assert sum(result.checks.values()) == 1 and result.verdict == C.PARTLY


def test_claims_metrics_are_numbers_with_stable_keys() -> None:
    results = C.evaluate(claim_inputs(np.linspace(1.0, 0.4, 7), half=0.01), -0.8)
    metrics = C.claims_metrics(results)
    assert metrics["claims/m/t/C1"] == 1.0 and metrics["claims/holds"] == 3.0
    assert all(isinstance(v, float) for v in metrics.values())
    assert list(metrics) == sorted(metrics)
