"""The CPU-side logic of the prepared GPU check (``bench/gpu_check.py``): its options, the diff of
two output trees, the report, and a driver run that skips every CUDA part on a machine without
one. The checks themselves need a GPU and run only through ``bench/gpu_check.sh``."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def _load_gpu_check():
    """bench/ is not a package: the module is loaded from its path."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


gc = _load_gpu_check()


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def test_defaults_run_every_part_on_cuda_into_out(monkeypatch) -> None:
    monkeypatch.setenv("OUT", "/somewhere/out")
    args = gc.parse_args([])
    assert args.parts == list(gc.PARTS) and args.device == "cuda"
    assert args.out == Path("/somewhere/out")
    assert args.timeouts == gc.TIMEOUTS and sum(gc.TIMEOUTS.values()) <= args.budget < 480
    monkeypatch.delenv("OUT")
    assert gc.parse_args([]).out == Path("gpu_check_out")


def test_parts_keep_their_order_and_timeouts_override_one_part() -> None:
    args = gc.parse_args(["--parts", "pipeline,env", "--timeout", "pipeline=300", "--device=cpu"])
    assert args.parts == ["env", "pipeline"] and args.device == "cpu"
    assert args.timeouts == {**gc.TIMEOUTS, "pipeline": 300.0}


@pytest.mark.parametrize(
    "argv",
    [
        ["--parts", "env,gpu"],
        ["--parts", ""],
        ["--timeout", "pipeline"],
        ["--timeout", "pipeline=-1"],
        ["--timeout", "nothing=10"],
        ["--device", "tpu"],
    ],
)
def test_bad_options_are_refused(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        gc.parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The diff of two output trees
# --------------------------------------------------------------------------------------------


def _tree(root: Path, metrics: dict, curve: str) -> Path:
    (root / "metrics" / "sae").mkdir(parents=True)
    (root / "metrics" / "sae" / "s0.json").write_text(json.dumps(metrics, indent=2))
    (root / "plots").mkdir()
    (root / "plots" / "curve.csv").write_text(curve)
    (root / "results").mkdir()
    (root / "results" / "map.png").write_bytes(b"\x89PNG one")
    return root


METRICS = {"pt_L1": {"mse": 0.5, "l0": 30.25}, "layers": [1, 2], "model": "tiny", "nan": None}
CURVE = "step,loss\n1,2.5\n2,1.75\n"


def test_identical_trees_have_no_differences(tmp_path) -> None:
    a = _tree(tmp_path / "a", METRICS, CURVE)
    b = _tree(tmp_path / "b", METRICS, CURVE)
    (b / "mlflow.db").write_bytes(b"run ids differ: not a metric file")
    assert gc.diff_trees(a, b) == []


def test_one_changed_number_is_named_with_its_max_abs_difference(tmp_path) -> None:
    changed = {**METRICS, "pt_L1": {"mse": 0.5, "l0": 30.5}}
    a = _tree(tmp_path / "a", METRICS, CURVE)
    b = _tree(tmp_path / "b", changed, CURVE.replace("1.75", "1.5"))
    diffs = gc.diff_trees(a, b)
    assert diffs == [
        gc.FileDiff("metrics/sae/s0.json", "differs", 0.25),
        gc.FileDiff("plots/curve.csv", "differs", 0.25),
    ]
    assert gc.describe(diffs[0]) == "metrics/sae/s0.json: differs, max abs 0.25"


def test_missing_files_shapes_text_and_binary_are_reported(tmp_path) -> None:
    a = _tree(tmp_path / "a", METRICS, CURVE)
    b = _tree(tmp_path / "b", {**METRICS, "model": "other"}, CURVE + "3,1.0\n")
    (a / "metrics" / "sae" / "s0.json").rename(a / "metrics" / "sae" / "s1.json")
    (b / "metrics" / "sae" / "s1.json").write_text(json.dumps({**METRICS, "model": "other"}))
    (b / "results" / "map.png").write_bytes(b"\x89PNG two")
    by_path = {d.path: d for d in gc.diff_trees(a, b)}
    assert by_path["metrics/sae/s0.json"].kind == "only in second"
    assert by_path["metrics/sae/s1.json"] == gc.FileDiff(
        "metrics/sae/s1.json", "differs", 0.0, "text differs"
    )
    assert by_path["plots/curve.csv"] == gc.FileDiff(
        "plots/curve.csv", "differs", None, "shape differs"
    )
    assert by_path["results/map.png"] == gc.FileDiff("results/map.png", "differs", None, "binary")
    (b / "metrics" / "sae" / "s0.json").unlink()
    assert gc.diff_trees(a, b)[0] == gc.FileDiff(
        "metrics/sae/s1.json", "differs", 0.0, "text differs"
    )
    assert gc.diff_trees(b, a)[0].kind == "differs"


def test_nan_equals_nan_but_not_a_number(tmp_path) -> None:
    (tmp_path / "a.json").write_text('{"x": NaN, "y": 1.0, "z": 1}')
    (tmp_path / "b.json").write_text('{"x": NaN, "y": 1.0, "z": 1.0}')
    (tmp_path / "c.json").write_text('{"x": 0.0, "y": 1.0, "z": 1}')
    assert gc.numbers_max_abs(tmp_path / "a.json", tmp_path / "b.json") == (0.0, "")
    assert gc.numbers_max_abs(tmp_path / "a.json", tmp_path / "c.json")[0] == float("inf")


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def test_report_is_json_and_a_markdown_table_per_part(tmp_path) -> None:
    results = [
        gc.PartResult("env", "ok", 2.04, ["python 3.12"]),
        gc.PartResult(
            "stack",
            "failed",
            31.0,
            ["gap | 3e-4", "second note"],
            {"table": {"columns": ["sae", "max abs"], "rows": [[0, "3e-4"], [1, "0"]]}},
        ),
        gc.PartResult("pipeline", "skipped", notes=["no CUDA"]),
    ]
    report = gc.write_report(tmp_path / "out", results, "cuda")
    assert not report["ok"]
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.startswith("# GPU check: FAIL\n")
    assert "| part | status | seconds | notes |" in md
    assert "| env | ok | 2.0 | python 3.12 |" in md
    assert "| stack | failed | 31.0 | gap \\| 3e-4; second note |" in md
    assert "| pipeline | skipped | 0.0 | no CUDA |" in md
    assert "## stack\n\n| sae | max abs |\n| --- | --- |\n| 0 | 3e-4 |\n| 1 | 0 |\n" in md
    assert gc.write_report(tmp_path / "out", results[::2], "cuda")["ok"]


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def test_driver_skips_every_cuda_part_without_cuda(tmp_path, monkeypatch, capsys) -> None:
    """Only ``env`` runs (in its own subprocess); the report says why the others did not."""
    monkeypatch.setattr(gc, "cuda_available", lambda: False)
    assert gc.main(["--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    statuses = {p["name"]: (p["status"], p["notes"]) for p in report["parts"]}
    assert list(statuses) == list(gc.PARTS)
    assert statuses["env"][0] == "ok" and statuses["env"][1][0].startswith("python ")
    for name in gc.CUDA_PARTS:
        assert statuses[name] == ("skipped", ["no CUDA"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env.log", "report.json", "report.md"]
    out = capsys.readouterr().out
    assert "[pipeline] skipped 0.0 s no CUDA" in out and "# GPU check: pass" in out


def test_a_part_past_its_timeout_is_killed_and_reported(tmp_path) -> None:
    args = gc.parse_args(["--out", str(tmp_path)])
    result = gc.run_part("env", args, timeout=0.01, scratch=tmp_path)
    assert result.status == "timeout" and result.notes == ["killed at 0 s"]


def test_a_failing_part_is_reported_and_fails_the_run(tmp_path, capsys) -> None:
    """``--device cpu`` runs the CUDA parts here; a pytest usage error fails the tests part."""
    argv = ["--out", str(tmp_path), "--parts", "tests", "--device", "cpu"]
    assert gc.main([*argv, "--pytest-args=tests/no_such_test_file.py"]) == 1
    (part,) = json.loads((tmp_path / "report.json").read_text())["parts"]
    assert part["status"] == "failed" and part["seconds"] > 0
    assert "no_such_test_file.py" in (tmp_path / "tests.log").read_text()
    assert "# GPU check: FAIL" in capsys.readouterr().out
