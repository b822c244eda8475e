"""summary.md: its sections in order, one blank line apart, with provenance and verdicts."""

from __future__ import annotations

from pathlib import Path

from paper_support import ONE_MODEL, TASKS, write_params, write_results

from layerwise.config import load_params
from layerwise.paper.claims import evaluate_claims
from layerwise.paper.inputs import load_inputs
from layerwise.paper.summary import summary_markdown
from layerwise.paper.tables import build_tables
from layerwise.paths import Paths

HEADINGS = [
    "# Layer-wise evolution of representations: reproduction summary",
    "## What ran",
    "## Substitution: our data and model vs the paper's",
    "## Claims",
    "## Figures (`figures/`, PNG and PDF)",
    "## Tables (`tables/`, CSV, Markdown and LaTeX)",
    "## MLflow runs",
]


def test_summary_sections_provenance_and_verdicts(tmp_path: Path) -> None:
    write_results(tmp_path, ONE_MODEL, TASKS, [0])
    params = load_params(write_params(tmp_path, ONE_MODEL, TASKS, [0]))
    inputs = load_inputs(params, Paths(tmp_path))
    results = evaluate_claims(inputs)
    built = build_tables(inputs, results)
    text = summary_markdown(
        inputs,
        results,
        [("layerwise_similarity", "a caption")],
        built,
        {"compare@tiny-sentiment-0": "abc123"},
        "deadbeef",
        missing_figures=[("similarity_across_models", "needs two models")],
    )
    lines = text.splitlines()
    assert [ln for ln in lines if ln.startswith("#")] == HEADINGS
    for i, line in enumerate(lines):
        if line.startswith("## "):
            assert lines[i - 1] == "" and lines[i - 2] != "" and lines[i + 1] == "", line
    assert text.endswith("|\n") and "\n\n\n" not in text
    assert "- git commit: `deadbeef`" in lines
    assert "this paper run" not in text
    # One seed: no seed interval and no seed floor, so C1 and C2 cannot hold; C3 still does.
    assert "Of 6 verdicts: 1 hold, 1 partly, 4 do not hold." in lines
    assert "What the data do not support:" in lines
    assert any(ln.startswith("- C1 on `tiny`/`sentiment` (does not hold)") for ln in lines)
    assert "not yet calibrated against chance or seeds" in text
    assert "reset_small` = 0.25" in text
    assert "- `layerwise_similarity`: a caption" in lines
    assert "- `similarity_across_models` (not drawn): needs two models" in lines
    assert sum(f"- `{t.name}`: " in text for t in built) == len(built)
    assert "| `tiny` | `sentiment` | 0 | `n/a` | `n/a` | `abc123` | `n/a` | `n/a` |" in lines
    assert "| `sentiment` | IMDB |" in text
