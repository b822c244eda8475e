"""summary.md: its sections in order, one blank line apart, with provenance and verdicts."""

from __future__ import annotations

from pathlib import Path

from paper_support import ONE_MODEL, TASKS, write_params, write_results

from layerwise.config import load_params
from layerwise.paper.claims import evaluate_claims
from layerwise.paper.inputs import load_inputs
from layerwise.paper.size_claims import evaluate_size_claims
from layerwise.paper.summary import summary_markdown
from layerwise.paper.tables import build_tables
from layerwise.paths import Paths

HEADINGS = [
    "# Layer-wise evolution of representations: reproduction summary",
    "## What ran",
    "## Substitution: our data and model vs the paper's",
    "## Claims",
    "### C3 (late layers specialise) in detail",
    "## Model-size check: C1 and C2 on one seed against the shuffled-label control",
    "## Figures (`figures/`, PNG and PDF)",
    "## Tables (`tables/`, CSV, Markdown and LaTeX)",
    "## MLflow runs",
]


def test_summary_sections_provenance_and_verdicts(tmp_path: Path) -> None:
    write_results(tmp_path, ONE_MODEL, TASKS, [0])
    params = load_params(write_params(tmp_path, ONE_MODEL, TASKS, [0]))
    inputs = load_inputs(params, Paths(tmp_path))
    results = evaluate_claims(inputs)
    size_results = evaluate_size_claims(inputs)
    built = build_tables(inputs, results, size_results)
    text = summary_markdown(
        inputs,
        results,
        size_results,
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
    # One seed: no seed interval, seed floor or SAE seed baseline: no claim can hold.
    assert "Of 6 verdicts: 0 hold, 1 partly, 5 do not hold." in lines
    assert "What the data do not support:" in lines
    assert any(ln.startswith("- C1 on `tiny`/`sentiment` (does not hold)") for ln in lines)
    assert "calibrated" not in text
    c3 = lines.index("- `tiny`/`sentiment`: **does not hold**.")
    assert lines[c3 + 1].startswith("  (a) FT-only share of alive latents at the late layer 0.150")
    assert "a late dictionary that moved beyond SAE seed noise" in lines[c3 + 4]
    assert lines[c3 + 4].startswith("  Not shown: more FT-only crosscoder latents late than")
    assert "cannot be judged" in lines[c3 + 5]
    assert "shuffled-label crosscoder" in text
    assert "reset_small` = 0.25" in text
    assert "- `layerwise_similarity`: a caption" in lines
    assert "- `similarity_across_models` (not drawn): needs two models" in lines
    assert sum(f"- `{t.name}`: " in text for t in built) == len(built)
    ids = ["n/a", "n/a", "abc123", "n/a", "n/a", "n/a"]  # schema.STAGES order
    assert "| `tiny` | `sentiment` | 0 | " + " | ".join(f"`{i}`" for i in ids) + " |" in lines
    assert "| `sentiment` | IMDB |" in text
