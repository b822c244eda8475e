"""The paper's three claims turned into rules over our numbers, one verdict per (model, task).

Nadipalli (2025) claims that fine-tuning leaves early layers general, makes middle layers a
transition and specialises late layers. Any perturbation of the weights makes PT-vs-FT
similarity fall with depth (changes compound through the layers), so a falling curve alone
shows nothing; C1 and C2 are therefore judged against controls: the FT-vs-FT seed floor (how
different two equally good fine-tunes are), the shuffled-label fine-tune (what optimisation
without the task does) and the layer-reset test (where the task lives, without a similarity
metric). C3 is judged on calibrated feature numbers: the crosscoder's FT-only latents beside
the early layer and the shuffled-label control's crosscoder, split-half label selectivity above
its permutation null, and the PT-FT dictionary overlap beside the PT-PT seed baseline. Numbers
are seed means with Student t intervals over seeds; the thresholds are ``paper:`` params, and
:func:`rules` writes the rules verbatim into ``paper/summary.md``.

Early / middle / late are the model's SAE layers (``models.<m>.layers``): the first, the middle
one (index ``len // 2``) and the last.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from layerwise.paper.inputs import Stat

if TYPE_CHECKING:
    from layerwise.config import PaperParams
    from layerwise.paper.inputs import PaperInputs, RunSet

logger = logging.getLogger(__name__)

Verdict = Literal["holds", "partly", "does not hold"]
HOLDS: Verdict = "holds"
PARTLY: Verdict = "partly"
FAILS: Verdict = "does not hold"
VERDICTS: tuple[Verdict, ...] = (HOLDS, PARTLY, FAILS)
SCORES: dict[str, float] = {HOLDS: 1.0, PARTLY: 0.5, FAILS: 0.0}
"""Verdict -> number, for ``metrics/paper.json`` (so ``dvc metrics diff`` shows a change)."""

CLAIMS: dict[str, str] = {
    "C1": "early layers stay general, late layers specialise to the task",
    "C2": "middle layers transition",
    "C3": "late layers specialise (SAE features)",
}
CONTROLS: dict[str, str] = {
    "C1": "FT-FT seed band; shuffled-label fine-tune; layer reset",
    "C2": "FT-FT seed floor; layer reset",
    "C3": "early layer; shuffled-label crosscoder; label-permutation null; PT-PT SAE seed "
    "baseline and random floor",
}
"""What each claim's real fine-tune is compared with (the claims table's ``control`` column)."""


def rules(params: PaperParams, confidence: float = 0.95) -> dict[str, str]:
    """The verdict rules as sentences, thresholds filled in (for summary.md)."""
    small, large = f"{params.reset_small:g}", f"{params.reset_large:g}"
    band = f"[{params.middle_lo:.3g}, {params.middle_hi:.3g}]"
    level = f"{round(100 * confidence)}%"
    return {
        "C1": (
            "early part: at the early SAE layer the seed-mean PT-FT token cosine is at or above "
            "the lower edge of the FT-FT seed band (the minimum over seed pairs), and resetting "
            "blocks 1..k to PT (bottom-up, k = the early SAE layer) loses less than "
            f"{small} of the fine-tuning gain (seed mean of `lost_gain`). Late part: at the "
            "late SAE layer the PT-FT cosine lies below the seed band's lower edge and below "
            "the shuffled-label control's PT-FT cosine, each by a margin whose "
            f"{level} t interval over seeds excludes 0, and resetting the top k blocks "
            f"(top-down, the same k) loses at least {large} of the gain. holds if both parts "
            "hold, partly if one does, does not hold if neither. Effect sizes: the two late "
            "margins and the top-down minus bottom-up lost gain at k, with seed intervals."
        ),
        "C2": (
            "similarity transition: per seed, the largest one-layer increase of (seed-floor "
            "mean FT-FT cosine - PT-FT cosine), placed at relative depth (j + 0.5)/L between "
            "layers j and j+1; reset transition: per seed, the mean of the bottom-up midpoint "
            "k/L and the top-down boundary 1 - k/L (midpoint = smallest k that loses half the "
            f"gain, from the reset stage). Check (a): the seed-mean similarity transition lies "
            f"in {band} and its step's {level} t interval over seeds excludes 0; (b): the "
            f"seed-mean reset transition lies in {band}. holds if both, partly if one, does not "
            "hold if neither."
        ),
        "C3": (
            "(a) crosscoder: the share of alive latents that are FT-only (relative FT decoder "
            "norm above `crosscoder.ft_only_above`, not flagged by Latent Scaling) at the late "
            "SAE layer exceeds, per seed, both the early layer's share and the shuffled-label "
            f"control's late share (one run) by at least {params.ft_only_margin:g} on the "
            f"seed mean, with the {level} t interval of each difference above 0. (b) "
            "features: the late FT SAE's top features' split-half selectivity minus its "
            "label-permutation null (`selectivity_excess_ft`) is at least "
            f"{params.selectivity_margin:g} with its {level} seed interval above 0, and exceeds "
            "the late PT SAE's excess, per seed, by at least "
            f"{params.selectivity_margin:g} with that difference's seed interval above 0. (c) "
            "dictionary overlap: the late PT-FT overlap of the separate SAEs, normalised "
            "between the random-direction floor (0) and the PT-PT seed baseline (1) "
            f"(`overlap_rel`), has a seed mean below {params.overlap_rel_max:g} and the upper "
            f"end of its {level} seed interval below 1 (not judged with one seed: no seed "
            "baseline). holds if (a), (b) and (c) hold, partly if one or two do, does not "
            "hold if none. Effect sizes: the two FT-only differences, the FT excess and FT "
            "minus PT excess, and the overlap, with seed intervals."
        ),
    }


NOT_EVALUABLE = (
    "A check that needs a seed interval fails with one seed, and a check on an undefined number "
    "(no seed pair, a fine-tune that does not beat the majority class) fails."
)
"""Said once under the rules in summary.md: missing evidence never counts as support."""


@dataclass(frozen=True)
class ClaimInputs:
    """Everything the rules read for one (model, task): per-seed curves and the controls."""

    model: str
    task: str
    layers: np.ndarray
    """All layers 0..L (0 = embeddings), ascending."""
    cosine: np.ndarray
    """``[n_seeds, L + 1]`` PT-vs-FT token cosine per seed."""
    floor_min: np.ndarray
    """``[L + 1]`` FT-vs-FT cosine, lowest over seed pairs (NaN with one seed)."""
    floor_mean: np.ndarray
    shuffled: np.ndarray
    """``[L + 1]`` PT-vs-FT-shuffled cosine (the shuffled-label control, one run)."""
    lost_gain: Mapping[str, np.ndarray]
    """Reset direction -> ``[n_seeds, L + 1]`` share of the gain lost resetting k = 0..L blocks."""
    reset_depth: Mapping[str, np.ndarray]
    """Reset direction -> ``[n_seeds]`` midpoint as a relative depth k/L (NaN: none)."""
    sae_layers: Sequence[int]
    ft_only: Mapping[int, np.ndarray]
    """SAE layer -> ``[n_seeds]`` crosscoder FT-only fraction of alive latents."""
    shuffled_ft_only: Mapping[int, float]
    """SAE layer -> the shuffled-label control's FT-only fraction (one run)."""
    selectivity_excess_pt: Mapping[int, np.ndarray]
    """SAE layer -> ``[n_seeds]`` PT top features' split-half selectivity minus its
    permutation null (features stage)."""
    selectivity_excess_ft: Mapping[int, np.ndarray]
    overlap_rel: Mapping[int, np.ndarray]
    """SAE layer -> ``[n_seeds]`` PT-FT SAE overlap between the random floor (0) and the PT-PT
    seed baseline (1); NaN with one seed."""
    confidence: float = 0.95

    @property
    def n_layers(self) -> int:
        return int(np.max(self.layers))

    def stat(self, values: Iterable[float]) -> Stat:
        return Stat.of(values, self.confidence)

    def index(self, layer: int) -> int:
        idx = np.flatnonzero(np.asarray(self.layers) == layer)
        if idx.size == 0:
            raise ValueError(
                f"{self.model}/{self.task}: SAE layer {layer} is not among the similarity "
                f"layers {np.asarray(self.layers).tolist()}"
            )
        return int(idx[0])


@dataclass(frozen=True)
class ClaimResult:
    """One claim's verdict for one (model, task), with the numbers and checks behind it."""

    claim: str
    model: str
    task: str
    verdict: Verdict
    numbers: dict[str, float]
    checks: dict[str, bool]
    evidence: str
    """One line with the numbers, for tables and summary.md."""
    effects: dict[str, Stat] = field(default_factory=dict)
    """Effect sizes with their seed intervals (also flattened into ``numbers``)."""
    compared_with: str = ""
    """The control, where it is not the claim's usual one (the one-seed checks)."""

    @property
    def title(self) -> str:
        return CLAIMS[self.claim]

    @property
    def control(self) -> str:
        return self.compared_with or CONTROLS[self.claim]

    @property
    def score(self) -> float:
        return SCORES[self.verdict]

    def effect_text(self) -> str:
        """The effect sizes as ``name mean [lo, hi]``, for the claims table."""
        return "; ".join(f"{name} {s.ci_text(3)}" for name, s in self.effects.items()) or "—"


def early_middle_late(sae_layers: Sequence[int]) -> tuple[int, int | None, int]:
    """First, middle (``None`` with fewer than 3 layers) and last SAE layer."""
    layers = sorted(int(k) for k in sae_layers)
    if not layers:
        raise ValueError("no SAE layers: models.<m>.layers must list at least one layer")
    middle = layers[len(layers) // 2] if len(layers) >= 3 else None
    return layers[0], middle, layers[-1]


def reset_k(sae_layers: Sequence[int], n_layers: int) -> int:
    """The blocks C1 resets from each end: as many as the early SAE layer (at least one), so
    the early and the late reset are like for like."""
    return min(max(min(sae_layers), 1), n_layers)


def _flatten(effects: Mapping[str, Stat]) -> dict[str, float]:
    """Effects as metrics: ``name`` (seed mean), ``name_lo`` and ``name_hi`` (seed interval)."""
    out: dict[str, float] = {}
    for name, s in effects.items():
        out.update({name: s.mean, f"{name}_lo": s.lo, f"{name}_hi": s.hi})
    return out


def parts_verdict(parts: Sequence[bool]) -> Verdict:
    """All parts true: holds; some: partly; none: does not hold."""
    n = sum(parts)
    return HOLDS if n == len(parts) else PARTLY if n else FAILS


def yes_no(ok: bool) -> str:
    return "yes" if ok else "no"


def c1_effects(inp: ClaimInputs) -> tuple[dict[str, Stat], int]:
    """C1's numbers with seed intervals, and k, the blocks reset from each end."""
    early, _, late = early_middle_late(inp.sae_layers)
    ie, il = inp.index(early), inp.index(late)
    k = reset_k(inp.sae_layers, inp.n_layers)
    bottom, top = inp.lost_gain["bottom_up"][:, k], inp.lost_gain["top_down"][:, k]
    effects = {
        "cosine_early": inp.stat(inp.cosine[:, ie]),
        "early_below_band": inp.stat(inp.floor_min[ie] - inp.cosine[:, ie]),
        "reset_early_lost": inp.stat(bottom),
        "cosine_late": inp.stat(inp.cosine[:, il]),
        "late_below_band": inp.stat(inp.floor_min[il] - inp.cosine[:, il]),
        "late_below_shuffled": inp.stat(inp.shuffled[il] - inp.cosine[:, il]),
        "reset_late_lost": inp.stat(top),
        "reset_late_minus_early": inp.stat(top - bottom),
    }
    return effects, k


def check_c1(inp: ClaimInputs, params: PaperParams) -> ClaimResult:
    """C1: the early layer is within seed noise and cheap to reset; the late layer moved beyond
    seed noise and beyond the shuffled-label control, and resetting it costs most of the gain."""
    early, _, late = early_middle_late(inp.sae_layers)
    e, k = c1_effects(inp)
    checks = {
        "early_in_seed_band": bool(e["early_below_band"].mean <= 0),
        "early_reset_costs_little": bool(e["reset_early_lost"].mean < params.reset_small),
        "late_below_seed_band": e["late_below_band"].excludes_zero_above,
        "late_below_shuffled": e["late_below_shuffled"].excludes_zero_above,
        "late_reset_costs_most": bool(e["reset_late_lost"].mean >= params.reset_large),
    }
    values = list(checks.values())
    early_ok, late_ok = all(values[:2]), all(values[2:])
    evidence = (
        f"early L{early}: cosine {e['cosine_early'].ci_text()}, below seed band by "
        f"{e['early_below_band'].ci_text()} (in band: {yes_no(values[0])}), bottom-up reset of "
        f"{k} block(s) loses {e['reset_early_lost'].ci_text()} of the gain; late L{late}: "
        f"below seed band by {e['late_below_band'].ci_text()}, below shuffled by "
        f"{e['late_below_shuffled'].ci_text()}, top-down reset of {k} block(s) loses "
        f"{e['reset_late_lost'].ci_text()}; early part {'holds' if early_ok else 'fails'}, "
        f"late part {'holds' if late_ok else 'fails'}"
    )
    verdict = parts_verdict([early_ok, late_ok])
    return ClaimResult("C1", inp.model, inp.task, verdict, _flatten(e), checks, evidence, e)


def _steepest_excess_drop(inp: ClaimInputs) -> tuple[np.ndarray, np.ndarray]:
    """Per seed: depth (j + 0.5)/L of the largest one-layer rise of (seed floor - PT-FT
    cosine) between layers j and j+1, and that rise; NaN where the floor is undefined."""
    steps = np.diff(inp.floor_mean[None, :] - inp.cosine, axis=1)
    depth = np.full(steps.shape[0], math.nan)
    size = np.full(steps.shape[0], math.nan)
    for s, row in enumerate(steps):
        if np.isfinite(row).any():
            j = int(np.nanargmax(row))
            depth[s], size[s] = (j + 0.5) / inp.n_layers, row[j]
    return depth, size


def check_c2(inp: ClaimInputs, params: PaperParams) -> ClaimResult:
    """C2: both the similarity transition (relative to the seed floor) and the reset
    transition lie in the middle of the network."""
    depth, size = _steepest_excess_drop(inp)
    bottom, top = inp.reset_depth["bottom_up"], 1.0 - inp.reset_depth["top_down"]
    both = np.stack([bottom, top])
    reset = np.full(both.shape[1], math.nan)
    has = np.isfinite(both).any(axis=0)
    reset[has] = np.nanmean(both[:, has], axis=0)
    e = {
        "transition_depth": inp.stat(depth),
        "transition_step": inp.stat(size),
        "reset_transition_depth": inp.stat(reset),
    }

    def middle(s: Stat) -> bool:
        return bool(params.middle_lo <= s.mean <= params.middle_hi)

    checks = {
        "a_similarity_transition_in_middle": middle(e["transition_depth"])
        and e["transition_step"].excludes_zero_above,
        "b_reset_transition_in_middle": middle(e["reset_transition_depth"]),
    }
    evidence = (
        f"similarity transition at depth {e['transition_depth'].ci_text(2)} (step "
        f"{e['transition_step'].ci_text()}): {yes_no(checks['a_similarity_transition_in_middle'])}"
        f"; reset transition at depth {e['reset_transition_depth'].ci_text(2)}: "
        f"{yes_no(checks['b_reset_transition_in_middle'])} (middle = [{params.middle_lo:.3g}, "
        f"{params.middle_hi:.3g}])"
    )
    verdict = parts_verdict(list(checks.values()))
    return ClaimResult("C2", inp.model, inp.task, verdict, _flatten(e), checks, evidence, e)


def _layer_values(inp: ClaimInputs, layers: Sequence[int]) -> None:
    """Fail naming the mapping and layer when a C3 number is missing for an SAE layer."""
    for name in ("ft_only", "shuffled_ft_only", "selectivity_excess_pt", "selectivity_excess_ft"):
        missing = [k for k in layers if k not in getattr(inp, name)]
        if missing:
            raise ValueError(f"{inp.model}/{inp.task}: no {name} for SAE layer(s) {missing}")


def c3_effects(inp: ClaimInputs) -> dict[str, Stat]:
    """C3's numbers at the late (and early) SAE layer, per seed, with seed intervals."""
    early, _, late = early_middle_late(inp.sae_layers)
    _layer_values(inp, (early, late))
    ft_late = np.asarray(inp.ft_only[late], dtype=float)
    excess_ft = np.asarray(inp.selectivity_excess_ft[late], dtype=float)
    excess_pt = np.asarray(inp.selectivity_excess_pt[late], dtype=float)
    overlap = np.asarray(inp.overlap_rel.get(late, [math.nan]), dtype=float)
    return {
        "ft_only_late": inp.stat(ft_late),
        "ft_only_late_minus_early": inp.stat(ft_late - np.asarray(inp.ft_only[early])),
        "ft_only_late_minus_shuffled": inp.stat(ft_late - inp.shuffled_ft_only[late]),
        "selectivity_excess_ft_late": inp.stat(excess_ft),
        "selectivity_excess_ft_minus_pt_late": inp.stat(excess_ft - excess_pt),
        "overlap_rel_late": inp.stat(overlap),
    }


def _at_least(s: Stat, margin: float) -> bool:
    """Seed mean at least ``margin`` and the seed interval above 0 (fails with one seed)."""
    return bool(s.mean >= margin) and s.excludes_zero_above


def check_c3(inp: ClaimInputs, params: PaperParams) -> ClaimResult:
    """C3: the late layer gains FT-only crosscoder latents beyond the early layer and beyond
    training without the task, its FT features are label-selective beyond chance and beyond
    the PT features, and its dictionary moved beyond SAE seed noise."""
    early, _, late = early_middle_late(inp.sae_layers)
    e = c3_effects(inp)
    overlap = e["overlap_rel_late"]
    checks = {
        "a_ft_only_late_above_early": _at_least(
            e["ft_only_late_minus_early"], params.ft_only_margin
        ),
        "a_ft_only_late_above_shuffled": _at_least(
            e["ft_only_late_minus_shuffled"], params.ft_only_margin
        ),
        "b_ft_selectivity_above_null": _at_least(
            e["selectivity_excess_ft_late"], params.selectivity_margin
        ),
        "b_ft_selectivity_above_pt": _at_least(
            e["selectivity_excess_ft_minus_pt_late"], params.selectivity_margin
        ),
        "c_overlap_below_seed_baseline": bool(
            overlap.mean < params.overlap_rel_max and overlap.hi < 1
        ),
    }
    parts = [
        checks["a_ft_only_late_above_early"] and checks["a_ft_only_late_above_shuffled"],
        checks["b_ft_selectivity_above_null"] and checks["b_ft_selectivity_above_pt"],
        checks["c_overlap_below_seed_baseline"],
    ]
    if math.isfinite(overlap.hi):
        overlap_text = f"{overlap.ci_text()} (needs < {params.overlap_rel_max:g}, CI below 1)"
    else:
        overlap_text = (
            f"{overlap.ci_text()}: cannot be judged (needs 2+ seeds for a seed interval and "
            "the PT-PT seed baseline)"
        )
    evidence = (
        f"(a) FT-only share L{late} {e['ft_only_late'].ci_text()}: minus L{early} "
        f"{e['ft_only_late_minus_early'].ci_text()}, minus shuffled "
        f"({inp.shuffled_ft_only[late]:.3f}) {e['ft_only_late_minus_shuffled'].ci_text()}: "
        f"{yes_no(parts[0])}; (b) FT selectivity excess L{late} "
        f"{e['selectivity_excess_ft_late'].ci_text()}, FT minus PT "
        f"{e['selectivity_excess_ft_minus_pt_late'].ci_text()}: {yes_no(parts[1])}; (c) "
        f"overlap_rel L{late} {overlap_text}: {yes_no(parts[2])}"
    )
    numbers = _flatten(e)
    numbers["shuffled_ft_only_late"] = float(inp.shuffled_ft_only[late])
    verdict = parts_verdict(parts)
    return ClaimResult("C3", inp.model, inp.task, verdict, numbers, checks, evidence, e)


def evaluate(inp: ClaimInputs, params: PaperParams) -> list[ClaimResult]:
    """All three claims for one (model, task), in order C1, C2, C3."""
    results = [check_c1(inp, params), check_c2(inp, params), check_c3(inp, params)]
    for r in results:
        logger.info("%s %s/%s: %s (%s)", r.claim, r.model, r.task, r.verdict, r.evidence)
    return results


def claim_inputs(rs: RunSet) -> ClaimInputs:
    """One (model, task)'s per-seed curves and controls in the shape the rules read."""
    layers = rs.sae_layers
    directions = ("bottom_up", "top_down")
    return ClaimInputs(
        model=rs.model,
        task=rs.task,
        layers=rs.layers,
        cosine=rs.sim("cosine"),
        floor_min=rs.seed_floor["cosine_min"],
        floor_mean=rs.seed_floor["cosine_mean"],
        shuffled=rs.shuffled_similarity["cosine"],
        lost_gain={d: rs.reset_values(d, "lost_gain") for d in directions},
        reset_depth={
            d: np.array([r.get(f"{d}/midpoint_depth", math.nan) for r in rs.reset_summary])
            for d in directions
        },
        sae_layers=layers,
        ft_only={k: rs.crosscoder_values("ft_only_frac", k) for k in layers},
        shuffled_ft_only={k: rs.shuffled_crosscoder_value("ft_only_frac", k) for k in layers},
        selectivity_excess_pt={k: rs.feature_values("selectivity_excess_pt", k) for k in layers},
        selectivity_excess_ft={k: rs.feature_values("selectivity_excess_ft", k) for k in layers},
        overlap_rel={k: rs.baseline_values("overlap_rel", k) for k in layers},
        confidence=rs.confidence,
    )


def evaluate_claims(inputs: PaperInputs) -> list[ClaimResult]:
    """All claims for every (model, task), with the thresholds in ``paper:`` params."""
    out: list[ClaimResult] = []
    for m in inputs.models:
        for t in inputs.tasks:
            out += evaluate(claim_inputs(inputs.run(m, t)), inputs.params.paper)
    return out


def tally(results: Iterable[ClaimResult]) -> dict[str, int]:
    """How many (model, task, claim) verdicts fall in each category."""
    counts = dict.fromkeys(VERDICTS, 0)
    for r in results:
        counts[r.verdict] += 1
    return counts


def claims_metrics(results: Sequence[ClaimResult]) -> dict[str, float]:
    """Flat, deterministic metrics: ``claims/<model>/<task>/<C1|C2|C3>`` (1 holds, 0.5 partly,
    0 does not hold), the numbers behind them under ``claims/<model>/<task>/<name>`` (effect
    sizes with ``_lo`` / ``_hi`` seed bounds), and the totals ``claims/n``, ``claims/holds``,
    ``claims/partly``, ``claims/does_not_hold``.

    The model is always part of the key, so adding a model does not rename existing keys.
    """
    out: dict[str, float] = {}
    for r in results:
        prefix = f"claims/{r.model}/{r.task}"
        out[f"{prefix}/{r.claim}"] = r.score
        for name, value in r.numbers.items():
            out[f"{prefix}/{name}"] = float(value)
    counts = tally(results)
    out["claims/n"] = float(len(results))
    for verdict, n in counts.items():
        out[f"claims/{verdict.replace(' ', '_')}"] = float(n)
    return dict(sorted(out.items()))
