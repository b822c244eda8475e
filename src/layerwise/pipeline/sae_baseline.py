"""sae_baseline@<model>-<task>: how much dictionary overlap to expect between two SAEs that
learned the same thing, so the PT-vs-FT overlap of separately trained SAEs can be read.

Two SAEs never learn identical dictionaries: a different seed (initial directions, batch order,
token sample) on the same activations already moves features. The PT-vs-FT mean max cosine
similarity (MMCS) of one seed's SAEs therefore means something only next to the MMCS of two SAEs
on the *same* model's activations (PT_s vs PT_s', the seed baseline; FT_s vs FT_s' alike) and the
MMCS of random directions (the floor). ``overlap_rel`` puts PT-vs-FT on that scale: 1 is as
similar as a rerun of the same SAE, 0 as similar as chance.

Every dictionary is the SAE's decoder rows that are finite and nonzero. Dead features (which
the sae stage reports as ``dead_frac``) are not removed: that needs activations, and their rows
are independent random directions (each SAE has its own init seed), which pull every MMCS of a
row, the baseline's too, toward the floor alike.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layerwise import io
from layerwise.cli import StageArgs, stage_run
from layerwise.errors import MissingInputError, StaleInputError
from layerwise.features import dictionary_overlap
from layerwise.models import load_config, num_layers
from layerwise.paths import Paths
from layerwise.sae.model import CFG_FILENAME, load_sae
from layerwise.schema import SAE_BASELINE_COLUMNS, unit_name

logger = logging.getLogger("sae_baseline")

WHICH = ("pt", "ft")
SUMMARY_COLUMNS = SAE_BASELINE_COLUMNS[SAE_BASELINE_COLUMNS.index("mmcs_pt_ft") :]
"""The columns averaged over seeds into the summary (``L<layer>/<column>``): every number
after the row's keys (layer, depth, seed, other seed)."""


@dataclass(frozen=True)
class Dictionary:
    """One SAE as this stage reads it: its decoder directions and its eval L0."""

    rows: np.ndarray
    """``[n, D]`` float32, the finite nonzero decoder rows."""
    l0: float
    """Mean active features per token on the analysis split (``cfg.json`` ``eval.l0``)."""


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def run(args: StageArgs) -> dict:
    """The stage's work for parsed ``args``; returns what its DVC metrics file holds."""
    p, paths = args.params, Paths(args.root)
    model_def = p.model(args.model)
    dirs = sae_dirs(paths, args.model, args.task, p.seeds, model_def.layers)
    n_model_layers = num_layers(load_config(model_def.source))
    used = {"seeds": p.seeds, f"models.{args.model}.layers": model_def.layers}
    with stage_run("sae_baseline", args, used) as tracked:
        rows = [
            row
            for layer in model_def.layers
            for row in layer_rows(layer, n_model_layers, p.seeds, dirs)
        ]
        payload = {"rows": rows, "summary": summarise(rows)}
        with io.Staging() as staging:
            io.write_json(staging.file(paths.sae_baseline_json(args.model, args.task)), payload)
            csv_path = staging.file(paths.sae_baseline_csv(args.model, args.task))
            io.write_csv(csv_path, rows, list(SAE_BASELINE_COLUMNS))
            tracked.log_metrics(payload["summary"])
            tracked.log_artifact(csv_path, "sae_baseline", name="sae_baseline.csv")
    _log_summary(payload["summary"], model_def.layers)
    return payload


def sae_dirs(
    paths: Paths, model: str, task: str, seeds: list[int], layers: list[int]
) -> dict[tuple[int, str], Path]:
    """``(seed, unit) -> SAE folder`` for every seed and PT|FT unit, failing on the first
    missing one (naming it and the stage that makes it) before anything is loaded."""
    out = {}
    for seed in seeds:
        for which in WHICH:
            for layer in layers:
                name = unit_name(which, layer)
                folder = paths.saes(model, task, seed) / name
                if not (folder / CFG_FILENAME).is_file():
                    stage = f"sae@{model}-{task}-{seed}"
                    raise MissingInputError(
                        f"no SAE at {folder}: it is made by the {stage} stage "
                        f"(run `dvc repro {stage}` first)"
                    )
                out[seed, name] = folder
    return out


def _log_summary(summary: dict[str, float], layers: list[int]) -> None:
    for layer in layers:
        s = {c: summary[f"L{layer}/{c}"] for c in SUMMARY_COLUMNS}
        logger.info(
            "layer %d: MMCS PT-FT %.3f  PT-PT %.3f  FT-FT %.3f  floor %.3f  -> overlap_rel %.2f"
            "  (L0 PT %.1f FT %.1f)",
            layer,
            *s.values(),
        )


# --------------------------------------------------------------------------------------------
# The measurements
# --------------------------------------------------------------------------------------------


def load_dictionary(folder: Path) -> Dictionary:
    """The SAE's finite nonzero decoder rows and its eval L0 (from ``cfg.json``)."""
    w = load_sae(folder).W_dec.detach().numpy()
    keep = np.isfinite(w).all(1) & (np.linalg.norm(w, axis=1) > 0)
    cfg_path = folder / CFG_FILENAME
    l0 = json.loads(cfg_path.read_text()).get("eval", {}).get("l0")
    if l0 is None or not keep.any():
        what = "no eval.l0" if l0 is None else "no finite nonzero decoder row"
        raise StaleInputError(f"{cfg_path}: the SAE has {what}; rerun the sae stage that made it")
    return Dictionary(w[keep].astype(np.float32, copy=False), float(l0))


def symmetric_mmcs(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over both directions of the mean over rows of the max cosine with the other
    dictionary (signed, as :func:`layerwise.features.dictionary_overlap`: an anti-parallel
    direction is another feature for a nonnegative SAE)."""
    return 0.5 * (float(dictionary_overlap(a, b).mean()) + float(dictionary_overlap(b, a).mean()))


def random_floor(n_a: int, n_b: int, width: int, seed: int) -> float:
    """:func:`symmetric_mmcs` of ``n_a`` and ``n_b`` random Gaussian directions in ``width``
    dimensions (seeded): what two unrelated dictionaries of these sizes share by chance."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_a, width)).astype(np.float32)
    b = rng.standard_normal((n_b, width)).astype(np.float32)
    return symmetric_mmcs(a, b)


def relative_overlap(pt_ft: float, pt_pt: float, floor: float) -> float:
    """``(pt_ft - floor) / (pt_pt - floor)``; NaN without a baseline or when it is the floor."""
    den = pt_pt - floor
    return float((pt_ft - floor) / den) if np.isfinite(den) and den != 0 else float("nan")


def layer_rows(
    layer: int, n_model_layers: int, seeds: list[int], dirs: dict[tuple[int, str], Path]
) -> list[dict[str, Any]]:
    """One ``SAE_BASELINE_COLUMNS`` row per seed: its PT-vs-FT MMCS beside PT-vs-PT and
    FT-vs-FT against the next seed (cyclically; NaN with one seed) and the random floor."""
    units = {w: unit_name(w, layer) for w in WHICH}
    dicts = {(s, w): load_dictionary(dirs[s, units[w]]) for s in seeds for w in WHICH}
    rows = []
    for i, seed in enumerate(seeds):
        other = seeds[(i + 1) % len(seeds)] if len(seeds) > 1 else None
        pt, ft = dicts[seed, "pt"], dicts[seed, "ft"]
        same = {
            w: symmetric_mmcs(dicts[seed, w].rows, dicts[other, w].rows)
            if other is not None
            else float("nan")
            for w in WHICH
        }
        floor_seed = int(np.random.SeedSequence([seed, layer]).generate_state(1)[0])
        floor = random_floor(len(pt.rows), len(ft.rows), pt.rows.shape[1], floor_seed)
        pt_ft = symmetric_mmcs(pt.rows, ft.rows)
        rows.append(
            {
                "layer": layer,
                "depth": layer / n_model_layers,
                "seed": seed,
                "other_seed": other,
                "mmcs_pt_ft": pt_ft,
                "mmcs_pt_pt": same["pt"],
                "mmcs_ft_ft": same["ft"],
                "mmcs_floor": floor,
                "overlap_rel": relative_overlap(pt_ft, same["pt"], floor),
                "l0_pt": pt.l0,
                "l0_ft": ft.l0,
            }
        )
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``L<layer>/<column>``: each ``SUMMARY_COLUMNS`` value's mean over seeds."""
    summary = {}
    for layer in dict.fromkeys(r["layer"] for r in rows):
        mine = [r for r in rows if r["layer"] == layer]
        for col in SUMMARY_COLUMNS:
            summary[f"L{layer}/{col}"] = float(np.mean([r[col] for r in mine]))
    return summary
