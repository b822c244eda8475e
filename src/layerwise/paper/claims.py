"""The paper's three claims turned into rules over our numbers, one verdict per (model, task).

Nadipalli (2025) claims that fine-tuning leaves early layers general, makes middle layers a
transition and specialises late layers. The paper argues this from curves and examples; here each
part becomes a rule over measured numbers with confidence intervals, so a verdict can be wrong in
a visible way and changes when the data do. The rules are parameterised by
``paper.rho_threshold`` and written verbatim into ``paper/summary.md`` by :func:`rules`; nothing
here hard-codes a verdict or a number.

Early / middle / late are the model's SAE layers (``models.<m>.layers``): the first, the middle
one (index ``len // 2``) and the last.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
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
    "C1": "similarity falls with depth / early layers stay general",
    "C2": "middle layers transition",
    "C3": "late layers specialise",
}


def rules(rho_threshold: float) -> dict[str, str]:
    """The verdict rules as sentences, with the threshold filled in (for summary.md)."""
    t = f"{rho_threshold:g}"
    return {
        "C1": (
            f"holds if Spearman rho(token cosine, layer) over layers 0..L is <= {t} AND the "
            "early SAE layer's cosine CI lower bound is above the late SAE layer's cosine CI "
            f"upper bound; partly if only one of these is true, or rho < 0; does not hold "
            "otherwise (rho of CKA vs layer is reported beside it, not used)."
        ),
        "C2": (
            "holds if the middle SAE layer's cosine lies strictly between the early and the "
            "late layer's (early > middle > late) and its CI overlaps neither of theirs "
            "(early lower bound > middle upper bound and middle lower bound > late upper "
            "bound); partly if strictly between but a CI overlaps; does not hold otherwise "
            "(also when the model has fewer than 3 SAE layers)."
        ),
        "C3": (
            "three checks: (a) FT selectivity_top at the late layer > PT selectivity_top at "
            "the late layer; (b) FT selectivity_top late > FT selectivity_top early; (c) MMCS "
            "(PT/FT dictionary overlap) at the late layer < MMCS at the early layer. holds if "
            "all three are true, partly if one or two, does not hold if none."
        ),
    }


@dataclass(frozen=True)
class ClaimInputs:
    """Everything the rules read for one (model, task): seed means of the per-layer curves.

    With several seeds the curves are means across seeds and the CI bounds are means of the
    per-seed bounds (a deliberate simplification, stated in summary.md).
    """

    model: str
    task: str
    layers: np.ndarray
    """All layers 0..L (0 = embeddings), ascending."""
    cosine: np.ndarray
    cosine_lo: np.ndarray
    cosine_hi: np.ndarray
    cka: np.ndarray
    sae_layers: Sequence[int]
    selectivity_top_pt: Mapping[int, float]
    """SAE layer -> mean ROC AUC of the top-variance PT features (features stage)."""
    selectivity_top_ft: Mapping[int, float]
    mmcs: Mapping[int, float]
    """SAE layer -> mean max cosine between FT and PT decoder directions."""
    selective_frac_pt: Mapping[int, float] = field(default_factory=dict)
    selective_frac_ft: Mapping[int, float] = field(default_factory=dict)


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

    @property
    def title(self) -> str:
        return CLAIMS[self.claim]

    @property
    def score(self) -> float:
        return SCORES[self.verdict]


def early_middle_late(sae_layers: Sequence[int]) -> tuple[int, int | None, int]:
    """First, middle (``None`` with fewer than 3 layers) and last SAE layer."""
    layers = sorted(int(k) for k in sae_layers)
    if not layers:
        raise ValueError("no SAE layers: models.<m>.layers must list at least one layer")
    middle = layers[len(layers) // 2] if len(layers) >= 3 else None
    return layers[0], middle, layers[-1]


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rho, NaN (without a warning) when either input is constant or too short."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(x, y).statistic)


def _at(inp: ClaimInputs, layer: int) -> tuple[float, float, float]:
    """(cosine, lo, hi) at ``layer``."""
    idx = np.flatnonzero(np.asarray(inp.layers) == layer)
    if idx.size == 0:
        raise ValueError(
            f"{inp.model}/{inp.task}: SAE layer {layer} is not among the similarity layers "
            f"{np.asarray(inp.layers).tolist()}"
        )
    i = int(idx[0])
    return float(inp.cosine[i]), float(inp.cosine_lo[i]), float(inp.cosine_hi[i])


def _ci(v: float, lo: float, hi: float) -> str:
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def check_c1(inp: ClaimInputs, rho_threshold: float) -> ClaimResult:
    """C1: cosine falls with depth (rank correlation) and early is reliably above late."""
    early, _, late = early_middle_late(inp.sae_layers)
    rho_cos = spearman(inp.layers, inp.cosine)
    rho_cka = spearman(inp.layers, inp.cka)
    e, e_lo, e_hi = _at(inp, early)
    la, la_lo, la_hi = _at(inp, late)
    monotone = bool(rho_cos <= rho_threshold)  # False for NaN
    negative = bool(rho_cos < 0)
    separated = bool(e_lo > la_hi)
    if monotone and separated:
        verdict = HOLDS
    elif monotone or separated or negative:
        verdict = PARTLY
    else:
        verdict = FAILS
    evidence = (
        f"rho(cosine, layer) = {rho_cos:.2f} (threshold {rho_threshold:g}), "
        f"rho(CKA, layer) = {rho_cka:.2f}; cosine L{early} {_ci(e, e_lo, e_hi)} vs "
        f"L{late} {_ci(la, la_lo, la_hi)}: CIs {'separated' if separated else 'not separated'}"
    )
    return ClaimResult(
        "C1",
        inp.model,
        inp.task,
        verdict,
        {
            "rho_cosine": rho_cos,
            "rho_cka": rho_cka,
            "cosine_early": e,
            "cosine_early_lo": e_lo,
            "cosine_early_hi": e_hi,
            "cosine_late": la,
            "cosine_late_lo": la_lo,
            "cosine_late_hi": la_hi,
        },
        {"rho_below_threshold": monotone, "rho_negative": negative, "ci_separated": separated},
        evidence,
    )


def check_c2(inp: ClaimInputs) -> ClaimResult:
    """C2: the middle SAE layer sits between early and late, distinguishable from both."""
    early, middle, late = early_middle_late(inp.sae_layers)
    if middle is None:
        return ClaimResult(
            "C2",
            inp.model,
            inp.task,
            FAILS,
            {},
            {"between": False, "ci_separated": False},
            f"needs >= 3 SAE layers, the model has {len(inp.sae_layers)}",
        )
    e, e_lo, e_hi = _at(inp, early)
    m, m_lo, m_hi = _at(inp, middle)
    la, la_lo, la_hi = _at(inp, late)
    between = bool(e > m > la)
    separated = bool(e_lo > m_hi and m_lo > la_hi)
    if between and separated:
        verdict = HOLDS
    elif between:
        verdict = PARTLY
    else:
        verdict = FAILS
    evidence = (
        f"cosine L{early} {_ci(e, e_lo, e_hi)}, L{middle} {_ci(m, m_lo, m_hi)}, "
        f"L{late} {_ci(la, la_lo, la_hi)}: middle "
        f"{'strictly between' if between else 'not between'}, CIs "
        f"{'do not overlap' if separated else 'overlap'}"
    )
    return ClaimResult(
        "C2",
        inp.model,
        inp.task,
        verdict,
        {"cosine_middle": m, "cosine_middle_lo": m_lo, "cosine_middle_hi": m_hi},
        {"between": between, "ci_separated": separated},
        evidence,
    )


def check_c3(inp: ClaimInputs) -> ClaimResult:
    """C3: late FT features are more label-selective and the late dictionary changed most."""
    early, _, late = early_middle_late(inp.sae_layers)
    for name, mapping in (
        ("selectivity_top_pt", inp.selectivity_top_pt),
        ("selectivity_top_ft", inp.selectivity_top_ft),
        ("mmcs", inp.mmcs),
    ):
        missing = [k for k in (early, late) if k not in mapping]
        if missing:
            raise ValueError(f"{inp.model}/{inp.task}: no {name} for SAE layer(s) {missing}")
    ft_late, pt_late = float(inp.selectivity_top_ft[late]), float(inp.selectivity_top_pt[late])
    ft_early = float(inp.selectivity_top_ft[early])
    mmcs_early, mmcs_late = float(inp.mmcs[early]), float(inp.mmcs[late])
    checks = {
        "a_ft_above_pt_late": bool(ft_late > pt_late),
        "b_ft_late_above_early": bool(ft_late > ft_early),
        "c_mmcs_late_below_early": bool(mmcs_late < mmcs_early),
    }
    n = sum(checks.values())
    verdict = HOLDS if n == 3 else PARTLY if n > 0 else FAILS

    def mark(ok: bool) -> str:
        return "yes" if ok else "no"

    evidence = (
        f"(a) FT selectivity L{late} {ft_late:.3f} > PT {pt_late:.3f}: "
        f"{mark(checks['a_ft_above_pt_late'])}; (b) FT L{late} {ft_late:.3f} > FT L{early} "
        f"{ft_early:.3f}: {mark(checks['b_ft_late_above_early'])}; (c) MMCS L{late} "
        f"{mmcs_late:.3f} < L{early} {mmcs_early:.3f}: {mark(checks['c_mmcs_late_below_early'])}"
    )
    numbers = {
        "selectivity_top_ft_late": ft_late,
        "selectivity_top_pt_late": pt_late,
        "selectivity_top_ft_early": ft_early,
        "mmcs_early": mmcs_early,
        "mmcs_late": mmcs_late,
        "c3_checks_true": float(n),
    }
    for which, mapping in (("pt", inp.selective_frac_pt), ("ft", inp.selective_frac_ft)):
        if late in mapping:
            numbers[f"selective_frac_{which}_late"] = float(mapping[late])
    return ClaimResult("C3", inp.model, inp.task, verdict, numbers, checks, evidence)


def evaluate(inp: ClaimInputs, rho_threshold: float) -> list[ClaimResult]:
    """All three claims for one (model, task), in order C1, C2, C3."""
    results = [check_c1(inp, rho_threshold), check_c2(inp), check_c3(inp)]
    for r in results:
        logger.info("%s %s/%s: %s (%s)", r.claim, r.model, r.task, r.verdict, r.evidence)
    return results


def claim_inputs(rs: RunSet) -> ClaimInputs:
    """One (model, task)'s seed means in the shape the rules read."""
    means = {
        col: {k: rs.feature_stat(col, k).mean for k in rs.sae_layers}
        for col in (
            "selectivity_top_pt",
            "selectivity_top_ft",
            "mmcs",
            "selective_frac_pt",
            "selective_frac_ft",
        )
    }
    return ClaimInputs(
        model=rs.model,
        task=rs.task,
        layers=rs.layers,
        cosine=rs.sim_mean("cosine"),
        cosine_lo=rs.sim_mean("cosine_lo"),
        cosine_hi=rs.sim_mean("cosine_hi"),
        cka=rs.sim_mean("cka"),
        sae_layers=rs.sae_layers,
        selectivity_top_pt=means["selectivity_top_pt"],
        selectivity_top_ft=means["selectivity_top_ft"],
        mmcs=means["mmcs"],
        selective_frac_pt=means["selective_frac_pt"],
        selective_frac_ft=means["selective_frac_ft"],
    )


def evaluate_claims(inputs: PaperInputs, rho_threshold: float) -> list[ClaimResult]:
    """All claims for every (model, task), on seed means."""
    out: list[ClaimResult] = []
    for m in inputs.models:
        for t in inputs.tasks:
            out += evaluate(claim_inputs(inputs.run(m, t)), rho_threshold)
    return out


def tally(results: Iterable[ClaimResult]) -> dict[str, int]:
    """How many (model, task, claim) verdicts fall in each category."""
    counts = dict.fromkeys(VERDICTS, 0)
    for r in results:
        counts[r.verdict] += 1
    return counts


def claims_metrics(results: Sequence[ClaimResult]) -> dict[str, float]:
    """Flat, deterministic metrics: ``claims/<model>/<task>/<C1|C2|C3>`` (1 holds, 0.5 partly,
    0 does not hold), the numbers behind them under ``claims/<model>/<task>/<name>``, and the
    totals ``claims/n``, ``claims/holds``, ``claims/partly``, ``claims/does_not_hold``.

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
