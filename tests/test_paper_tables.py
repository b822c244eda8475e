"""The table framework: one table written as CSV (raw numbers), Markdown and LaTeX."""

from __future__ import annotations

from pathlib import Path

from layerwise.paper import tables
from layerwise.paper.inputs import Stat


def test_latex_escape() -> None:
    assert tables.latex_escape("a_b 5% R&D #1 $x {y}") == (r"a\_b 5\% R\&D \#1 \$x \{y\}")


def test_multi_seed_cells_get_std_and_ci_columns_in_every_format(tmp_path: Path) -> None:
    columns = [
        tables.Column("name", "name", align="l"),
        tables.Column("acc", "acc (%)", digits=1, scale=100.0, ci=True),
        tables.Column("note", "note", align="l"),
    ]
    row = {"name": "a_b", "acc": Stat.of([0.5, 0.7]), "acc_lo": 0.4, "acc_hi": 0.8, "note": None}
    table = tables.Table("t", "A caption with 5% and _.", columns, [row])
    assert table.csv_header() == ["name", "acc", "acc_std", "acc_lo", "acc_hi", "note"]
    assert table.to_csv().splitlines()[1].startswith("a_b,0.6,0.1414")
    assert table.to_csv().splitlines()[1].endswith(",0.4,0.8,")
    assert "| a_b | 60.0 ± 14.1 [40.0, 80.0] | — |" in table.to_markdown()
    latex = table.to_latex()
    assert r"a\_b & 60.0 $\pm$ 14.1 [40.0, 80.0] & --- \\" in latex
    assert r"\caption{A caption with 5\% and \_.}" in latex
    files = tables.write_tables([table], tmp_path)
    assert [f.name for f in files] == ["t.csv", "t.md", "t.tex"]


def test_seed_interval_columns(tmp_path: Path) -> None:
    """A ``seed_ci`` column shows the t interval over seeds, the text CI after it."""
    columns = [tables.Column("cos", "cos", digits=2, ci=True, seed_ci=True)]
    row = {"cos": Stat.of([0.5, 0.6, 0.7]), "cos_lo": 0.55, "cos_hi": 0.65}
    table = tables.Table("t", "c", columns, [row])
    assert table.csv_header() == [
        "cos",
        "cos_std",
        "cos_seed_lo",
        "cos_seed_hi",
        "cos_lo",
        "cos_hi",
    ]
    assert "| 0.60 [0.35, 0.85]; text [0.55, 0.65] |" in table.to_markdown()
    one = tables.Table("t", "c", columns, [{"cos": Stat.of([0.5]), "cos_lo": 0.4, "cos_hi": 0.6}])
    assert "| 0.50; text [0.40, 0.60] |" in one.to_markdown()
    assert one.to_csv().splitlines()[1] == "0.5,,,0.4,0.6"


def test_overlap_caption_says_whether_sparsity_was_matched() -> None:
    """The overlap caption follows the sae params: TopK and a tuned L1 are matched, one fixed
    L1 coefficient is not (and says where to look instead)."""
    from layerwise.config import SAEParams

    assert "k = 16, so sparsity is matched" in tables._sparsity_note(
        SAEParams(sparsity="topk", k=16)
    )
    assert "L0 = 40 (sae.l0_target)" in tables._sparsity_note(SAEParams(l0_target=40.0))
    fixed = tables._sparsity_note(SAEParams(l0_target=None))
    assert "not at matched sparsity" in fixed and "crosscoders" in fixed
