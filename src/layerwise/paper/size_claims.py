"""C1 and C2 on one seed against the shuffled-label control: the check that every model can get,
including the models of the model-size comparison (``size_models``), which run one seed and no
reset, seed floor or crosscoder.

The full rules (:mod:`layerwise.paper.claims`) need seed intervals, the seed floor and the reset
curves, and a check that needs them fails with one seed; judged by those rules a one-seed model
could only ever "not hold", which says nothing about it. These rules instead ask what one seed
can answer: did fine-tuning on the task move a layer more than fine-tuning on the same texts
with shuffled labels (optimisation without the task) did? Uncertainty is the text-level
interval of each cosine (the compare stage's bootstrap over analysis texts), so a verdict here
is weaker evidence than a seed-level one, and the summary says so. They are evaluated for every
model, full-protocol models on their first seed, so the two model sizes are judged alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from layerwise.paper.claims import ClaimResult, early_middle_late, parts_verdict, yes_no
from layerwise.paper.inputs import Stat

if TYPE_CHECKING:
    from layerwise.config import PaperParams
    from layerwise.paper.inputs import PaperInputs, RunSet

CONTROL = "shuffled-label fine-tune, one seed, text intervals"
"""What the one-seed checks compare with (the claims table's ``control`` column)."""


def rules(params: PaperParams) -> dict[str, str]:
    """The one-seed rules as sentences, thresholds filled in (for summary.md)."""
    band = f"[{params.middle_lo:.3g}, {params.middle_hi:.3g}]"
    return {
        "C1": (
            "with gap = shuffled-control cosine minus PT-FT cosine (how much more the task "
            "moved a layer than training without it) and its conservative text interval "
            "[shuffled lo - FT hi, shuffled hi - FT lo]: early part: at the early SAE layer the "
            "gap's interval reaches 0 or below (the task moved it no more than the control); "
            "late part: at the late SAE layer the gap's interval lies above 0. holds if both "
            "parts hold, partly if one does, does not hold if neither."
        ),
        "C2": (
            "the largest one-layer rise of the gap, placed at relative depth (j + 0.5)/L "
            f"between layers j and j+1, is positive and lies in {band}; one seed gives no "
            "interval for it. holds or does not hold."
        ),
    }


@dataclass(frozen=True)
class SizeClaimInputs:
    """One seed's PT-FT cosine and the shuffled control's, each with its text interval."""

    model: str
    task: str
    seed: int
    layers: np.ndarray
    sae_layers: list[int]
    cosine: np.ndarray
    cosine_lo: np.ndarray
    cosine_hi: np.ndarray
    shuffled: np.ndarray
    shuffled_lo: np.ndarray
    shuffled_hi: np.ndarray

    @property
    def n_layers(self) -> int:
        return int(np.max(self.layers))

    def gap(self, i: int) -> Stat:
        """Shuffled minus PT-FT cosine at layer index ``i``, with the conservative interval
        from the two text intervals (one 'seed': n = 1)."""
        return Stat(
            float(self.shuffled[i] - self.cosine[i]),
            math.nan,
            1,
            float(self.shuffled_lo[i] - self.cosine_hi[i]),
            float(self.shuffled_hi[i] - self.cosine_lo[i]),
        )

    def index(self, layer: int) -> int:
        return int(np.flatnonzero(np.asarray(self.layers) == layer)[0])


def size_claim_inputs(rs: RunSet, seed_index: int = 0) -> SizeClaimInputs:
    """One seed of a run set (either protocol) and its shuffled control."""
    sim, shuffled = rs.similarity[seed_index], rs.shuffled_similarity
    return SizeClaimInputs(
        model=rs.model,
        task=rs.task,
        seed=rs.seeds[seed_index],
        layers=rs.layers,
        sae_layers=list(rs.sae_layers),
        cosine=sim["cosine"],
        cosine_lo=sim["cosine_lo"],
        cosine_hi=sim["cosine_hi"],
        shuffled=shuffled["cosine"],
        shuffled_lo=shuffled["cosine_lo"],
        shuffled_hi=shuffled["cosine_hi"],
    )


def check_c1(inp: SizeClaimInputs) -> ClaimResult:
    """C1 on one seed: the early layer moved no more than under shuffled labels, the late layer
    moved more, beyond text noise."""
    early, _, late = early_middle_late(inp.sae_layers)
    e = {"gap_early": inp.gap(inp.index(early)), "gap_late": inp.gap(inp.index(late))}
    checks = {
        "early_not_beyond_shuffled": bool(e["gap_early"].lo <= 0),
        "late_beyond_shuffled": bool(e["gap_late"].lo > 0),
    }
    evidence = (
        f"seed {inp.seed}: gap (shuffled minus PT-FT cosine) at early L{early} "
        f"{e['gap_early'].ci_text(4)} (no more than the control: "
        f"{yes_no(checks['early_not_beyond_shuffled'])}); at late L{late} "
        f"{e['gap_late'].ci_text(4)} (beyond the control: "
        f"{yes_no(checks['late_beyond_shuffled'])})"
    )
    return _result("C1", inp, checks, evidence, e)


def transition(inp: SizeClaimInputs) -> tuple[float, float]:
    """Relative depth (j + 0.5)/L of the largest one-layer rise of the gap, and that rise
    (NaN for both when no step is defined)."""
    steps = np.diff(inp.shuffled - inp.cosine)
    if not np.isfinite(steps).any():
        return math.nan, math.nan
    j = int(np.nanargmax(steps))
    return (j + 0.5) / inp.n_layers, float(steps[j])


def check_c2(inp: SizeClaimInputs, params: PaperParams) -> ClaimResult:
    """C2 on one seed: the gap to the shuffled control opens fastest in the middle third."""
    depth, step = transition(inp)
    e = {"transition_depth": Stat.of([depth]), "transition_step": Stat.of([step])}
    in_middle = params.middle_lo <= depth <= params.middle_hi
    checks = {"transition_in_middle": bool(in_middle and step > 0)}
    evidence = (
        f"seed {inp.seed}: the gap opens fastest at depth {depth:.2f} (step {step:.4f}): "
        f"{yes_no(checks['transition_in_middle'])} (middle = [{params.middle_lo:.3g}, "
        f"{params.middle_hi:.3g}])"
    )
    return _result("C2", inp, checks, evidence, e)


def _result(
    claim: str, inp: SizeClaimInputs, checks: dict[str, bool], evidence: str, e: dict[str, Stat]
) -> ClaimResult:
    numbers: dict[str, float] = {}
    for name, s in e.items():
        numbers.update({name: s.mean, f"{name}_lo": s.lo, f"{name}_hi": s.hi})
    verdict = parts_verdict(list(checks.values()))
    return ClaimResult(
        claim, inp.model, inp.task, verdict, numbers, checks, evidence, e, compared_with=CONTROL
    )


def evaluate_size_claims(inputs: PaperInputs) -> list[ClaimResult]:
    """C1 and C2 on one seed for every (model, task): full-protocol models on their first
    seed, then the size models."""
    out: list[ClaimResult] = []
    for m in inputs.all_models:
        for t in inputs.tasks:
            inp = size_claim_inputs(inputs.any_run(m, t))
            out += [check_c1(inp), check_c2(inp, inputs.params.paper)]
    return out


def size_claims_metrics(results: list[ClaimResult]) -> dict[str, float]:
    """``size_claims/<model>/<task>/<C1|C2>`` (1 holds, 0.5 partly, 0 does not hold) and the
    numbers behind them, beside ``claims/...`` in ``metrics/paper.json``."""
    out: dict[str, float] = {}
    for r in results:
        prefix = f"size_claims/{r.model}/{r.task}"
        out[f"{prefix}/{r.claim}"] = r.score
        out.update({f"{prefix}/{k}": float(v) for k, v in r.numbers.items()})
    return dict(sorted(out.items()))
