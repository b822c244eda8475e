"""The prepared GPU check: what a session lent a CUDA machine runs once, in under 8 minutes.

Why one prepared script: device time is short and no CUDA path runs in CI, so everything that
can only be seen on a GPU is asked in one go, each question in its own subprocess with its own
timeout, so that a hang or a CUDA crash in one is reported without hiding the others:

- ``env``: Python, torch, CUDA and the GPU, and which needed packages are missing there;
- ``tests``: the tests marked ``cuda`` (``pytest -m cuda``);
- ``stack``: SAEs trained together as one ``[S, D, F]`` stack equal each SAE trained alone;
- ``agree``: similarity (streamed cosine/CKA, linear CKA) and SAE metrics agree between the CPU
  and CUDA on the same inputs;
- ``pipeline``: the five stages end to end twice on a tiny keyword task, driven as the stage
  scripts (subprocesses, as DVC runs them), with each stage's wall time and peak GPU memory and
  a bitwise diff of the metric and result files of the two runs.

The report (``report.json``, ``report.md`` and one log per part) goes to ``--out``. Exit status
1 when a part fails or times out; parts that need CUDA are skipped without it (``--device cpu``
runs them on the CPU instead, to try the script without a GPU).

Usage: ``bench/gpu_check.sh [--parts env,stack] [--timeout pipeline=300] ...``
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import random
import runpy
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()

PARTS = ("env", "tests", "stack", "agree", "pipeline")
CUDA_PARTS = frozenset({"tests", "stack", "agree", "pipeline"})
TIMEOUTS = {"env": 30.0, "tests": 100.0, "stack": 45.0, "agree": 45.0, "pipeline": 240.0}
"""Seconds per part; together within the default budget, which keeps the whole under 8 min."""
BUDGET_S = 465.0
FAILING = frozenset({"failed", "timeout"})

PIPELINE_MODULES = ("yaml", "transformers", "accelerate", "datasets", "mlflow", "sklearn", "scipy")
"""Import names the stage scripts need beyond torch and numpy (the GPU image lacks some)."""
DIFF_DIRS = ("metrics", "results", "plots")
"""The metric and result files a stage run writes under its root (weights are not compared)."""

STACK_TOL = {"rtol": 1e-4, "atol": 1e-5}
"""What the SAE trainer promises for stacked vs alone (its CPU test uses the same)."""
AGREE_RTOL, AGREE_ATOL = 1e-4, 1e-6


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def _parts(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(names) - set(PARTS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"parts must be among {', '.join(PARTS)}: {text!r}")
    return [p for p in PARTS if p in names]


def _timeout(text: str) -> tuple[str, float]:
    part, _, seconds = text.partition("=")
    try:
        value = float(seconds)
    except ValueError:
        value = math.nan
    if part not in PARTS or not value > 0:
        raise argparse.ArgumentTypeError(f"expected PART=SECONDS with PART in {PARTS}: {text!r}")
    return part, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; ``timeouts`` comes back as a full ``{part: seconds}`` dict."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", type=_parts, default=list(PARTS), help="comma-separated")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or "gpu_check_out"),
        help="report folder (default: $OUT, else ./gpu_check_out)",
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all parts")
    parser.add_argument(
        "--timeout", type=_timeout, action="append", default=[], metavar="PART=SECONDS"
    )
    parser.add_argument("--pytest-args", default="-m cuda", help="selection for the tests part")
    parser.add_argument("--worker", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.timeouts = {**TIMEOUTS, **dict(args.timeout)}
    return args


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The options a part's subprocess needs to do what this run was asked."""
    return ["--device", args.device, f"--pytest-args={args.pytest_args}"]


# --------------------------------------------------------------------------------------------
# Results and the report
# --------------------------------------------------------------------------------------------


@dataclass
class PartResult:
    """One part's outcome; ``data`` may hold a ``table`` ({columns, rows}) for the report."""

    name: str
    status: str  # ok, failed, timeout, skipped
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table's lines (cells escaped)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the verdict, one row per part, then each part's own table."""
    verdict = "pass" if report["ok"] else "FAIL"
    lines = [f"# GPU check: {verdict}", "", f"Device asked: {report['device']}.", ""]
    rows = [
        [p["name"], p["status"], f"{p['seconds']:.1f}", "; ".join(p["notes"])]
        for p in report["parts"]
    ]
    lines += markdown_table(["part", "status", "seconds", "notes"], rows)
    for part in report["parts"]:
        table = part["data"].get("table")
        if table:
            lines += [
                "",
                f"## {part['name']}",
                "",
                *markdown_table(table["columns"], table["rows"]),
            ]
    return "\n".join(lines) + "\n"


def write_report(out: Path, results: list[PartResult], device: str) -> dict[str, Any]:
    """``report.json`` and ``report.md`` under ``out``; returns the report."""
    report = {
        "ok": not any(r.status in FAILING for r in results),
        "device": device,
        "parts": [asdict(r) for r in results],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    return report


# --------------------------------------------------------------------------------------------
# Bitwise diff of two output trees
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileDiff:
    """One file that is not byte-equal in two trees."""

    path: str
    kind: str  # differs, only in first, only in second
    max_abs: float | None = None  # largest number difference (CSV/JSON of the same shape)
    note: str = ""


def _files(root: Path, subdirs: tuple[str, ...]) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for sub in subdirs
        for p in (root / sub).rglob("*")
        if p.is_file()
    }


def diff_trees(a: Path, b: Path, subdirs: tuple[str, ...] = DIFF_DIRS) -> list[FileDiff]:
    """Files under ``subdirs`` of ``a`` and ``b`` that are missing on one side or not
    byte-equal, sorted by path; for CSV and JSON files, with their largest number difference."""
    left, right = _files(a, subdirs), _files(b, subdirs)
    diffs = [FileDiff(p, "only in first") for p in left - right]
    diffs += [FileDiff(p, "only in second") for p in right - left]
    for rel in left & right:
        if (a / rel).read_bytes() != (b / rel).read_bytes():
            max_abs, note = numbers_max_abs(a / rel, b / rel)
            diffs.append(FileDiff(rel, "differs", max_abs, note))
    return sorted(diffs, key=lambda d: d.path)


def describe(diff: FileDiff) -> str:
    """One line for a report: path, kind, the largest number difference and any note."""
    text = f"{diff.path}: {diff.kind}"
    if diff.max_abs is not None:
        text += f", max abs {diff.max_abs:.3g}"
    return text + (f" ({diff.note})" if diff.note else "")


def _json_leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _json_leaves(item, f"{path}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _json_leaves(item, f"{path}/{i}")
    else:
        yield path, value


def _csv_leaves(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(newline="") as fh:
        for i, row in enumerate(csv.reader(fh)):
            for j, cell in enumerate(row):
                yield f"{i}:{j}", _number(cell)


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _leaf_gap(x: Any, y: Any) -> float | None:
    """Absolute difference of two numbers (NaN equals NaN); None when either is no number."""
    x, y = _number(x), _number(y)
    if not (isinstance(x, float) and isinstance(y, float)):
        return None
    if math.isnan(x) or math.isnan(y):
        return 0.0 if math.isnan(x) and math.isnan(y) else math.inf
    return abs(x - y)


def numbers_max_abs(a: Path, b: Path) -> tuple[float | None, str]:
    """Largest absolute difference of the numbers of two CSV or JSON files of the same shape,
    and a note when something else differs (text, shape, or a file that is neither)."""
    if a.suffix == ".json":
        pairs = (_json_leaves(json.loads(a.read_text())), _json_leaves(json.loads(b.read_text())))
    elif a.suffix == ".csv":
        pairs = (_csv_leaves(a), _csv_leaves(b))
    else:
        return None, "binary"
    left, right = dict(pairs[0]), dict(pairs[1])
    if left.keys() != right.keys():
        return None, "shape differs"
    gaps = [_leaf_gap(left[k], right[k]) for k in left]
    text_differs = any(g is None and left[k] != right[k] for k, g in zip(left, gaps, strict=True))
    numeric = [g for g in gaps if g is not None]
    return max(numeric, default=0.0), "text differs" if text_differs else ""


# --------------------------------------------------------------------------------------------
# The driver: one subprocess per part, each with its own timeout
# --------------------------------------------------------------------------------------------


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (False when torch itself is missing)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def run_part(name: str, args: argparse.Namespace, timeout: float, scratch: Path) -> PartResult:
    """Run one part in its own process group (its log: ``<out>/<name>.log``); a part that
    outlives ``timeout`` is killed with everything it started."""
    result_file = scratch / f"{name}.json"
    cmd = [sys.executable, str(SCRIPT), "--worker", name, "--result", str(result_file)]
    start = time.monotonic()
    with (args.out / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(
            [*cmd, *_worker_argv(args)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return PartResult(
                name, "timeout", time.monotonic() - start, [f"killed at {timeout:.0f} s"]
            )
    seconds = time.monotonic() - start
    if not result_file.exists():
        return PartResult(name, "failed", seconds, [f"exit {rc} without a result: see {name}.log"])
    result = PartResult(**{**json.loads(result_file.read_text()), "seconds": seconds})
    if rc != 0 and result.status not in FAILING:
        result.status, result.notes = "failed", [*result.notes, f"exit {rc}"]
    return result


def drive(args: argparse.Namespace) -> int:
    """Run the asked parts in order within the budget, print and write the report; 1 on failure."""
    args.out.mkdir(parents=True, exist_ok=True)
    can_run_cuda_parts = args.device == "cpu" or cuda_available()
    deadline = time.monotonic() + args.budget
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        for name in args.parts:
            left = deadline - time.monotonic()
            if name in CUDA_PARTS and not can_run_cuda_parts:
                result = PartResult(name, "skipped", notes=["no CUDA"])
            elif left < 5:
                result = PartResult(name, "timeout", notes=["the budget ran out before it began"])
            else:
                result = run_part(name, args, min(args.timeouts[name], left), Path(scratch))
            print(f"[{name}] {result.status} {result.seconds:.1f} s {'; '.join(result.notes)}")
            results.append(result)
    report = write_report(args.out, results, args.device)
    print(render_markdown(report))
    return 0 if report["ok"] else 1


# --------------------------------------------------------------------------------------------
# The parts (each runs in its own subprocess)
# --------------------------------------------------------------------------------------------


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """The import names among ``names`` that cannot be found here."""
    return [n for n in names if importlib.util.find_spec(n) is None]


def part_env(args: argparse.Namespace) -> PartResult:
    """What the machine has: versions, the GPU, and the packages the other parts lack."""
    import platform

    import torch

    data: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    notes = [f"python {data['python']}, torch {data['torch']}, CUDA {data['cuda']}"]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        data.update(
            gpu=props.name,
            gpus=torch.cuda.device_count(),
            gpu_mib=props.total_memory // 2**20,
            capability=f"{props.major}.{props.minor}",
        )
        notes.append(
            f"{data['gpus']} x {props.name} ({data['gpu_mib']} MiB, sm {data['capability']})"
        )
    missing = missing_modules(("numpy", "pytest", *PIPELINE_MODULES))
    data["missing"] = missing
    if missing:
        notes.append("missing packages: " + ", ".join(missing) + " (carry wheels in .whl/)")
    return PartResult("env", "failed" if missing else "ok", notes=notes, data=data)


def _tests_importing(modules: list[str]) -> list[Path]:
    """Test files that import one of ``modules`` at top level (collection would fail)."""
    starts = tuple(f"{kw} {m}" for m in modules for kw in ("import", "from"))
    return sorted(
        path
        for path in (REPO / "tests").rglob("test_*.py")
        if any(line.startswith(starts) for line in path.read_text().splitlines())
    )


def part_tests(args: argparse.Namespace) -> PartResult:
    """``pytest`` with the ``--pytest-args`` selection, leaving out files it could not import."""
    ignored = _tests_importing(missing_modules(PIPELINE_MODULES))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs"]
    cmd.append("--continue-on-collection-errors")  # one broken file must not hide the rest
    cmd += [*shlex.split(args.pytest_args), *(f"--ignore={p}" for p in ignored)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    print(proc.stdout, proc.stderr, sep="\n", flush=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    notes = [lines[-1].strip("= ") if lines else f"pytest exit {proc.returncode}"]
    notes += [line for line in lines if line.startswith(("FAILED ", "ERROR "))][:5]
    if ignored:
        notes.append(f"left out {len(ignored)} file(s) needing missing packages")
    if proc.returncode == 5:
        notes.insert(0, f"no test selected by {args.pytest_args!r}")
    status = {0: "ok", 5: "skipped"}.get(proc.returncode, "failed")
    return PartResult("tests", status, notes=notes)


def _random_acts(n: int, d: int, seed: int) -> Any:
    """``[n, d]`` float32 activations with a large-mean outlier dimension, like BERT's."""
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    x[:, 0] += 20.0
    return x


def _max_gap(got: dict[str, Any], ref: dict[str, Any]) -> tuple[float, bool]:
    """Largest absolute difference over ``ref``'s keys, and whether each is within the agreement
    tolerance (NaN on both sides counts as equal)."""
    gaps = {k: _leaf_gap(got[k], ref[k]) for k in ref}
    close = all(
        g is not None and (g == 0.0 or g <= AGREE_ATOL + AGREE_RTOL * abs(float(ref[k])))
        for k, g in gaps.items()
    )
    return max((g for g in gaps.values() if g is not None), default=0.0), close


def part_stack(args: argparse.Namespace) -> PartResult:
    """SAEs trained as one stack on the device equal each trained alone (same seeds) to the
    trainer's tolerance, and a second stacked run is bitwise equal to the first."""
    import torch

    from layerwise.runtime import seed_everything
    from layerwise.sae.model import SAEConfig
    from layerwise.sae.train import SAETrainer, TrainConfig

    seed_everything(0, device=args.device)
    d, acts = 64, [_random_acts(2048, 64, seed) for seed in (1, 2)]
    cfgs = [
        SAEConfig(d_in=d, d_sae=256, l1_coefficient=1.0, scale_factor=0.2),
        SAEConfig(d_in=d, d_sae=256, l1_coefficient=3.0, scale_factor=0.2),
        SAEConfig(d_in=d, d_sae=256, sparsity="topk", k=8, scale_factor=0.2),
        SAEConfig(d_in=d, d_sae=128, l1_coefficient=1.0, scale_factor=0.2),
    ]
    data = [acts[0], acts[1], acts[0], acts[1]]

    def train(idx: list[int], stack: bool) -> list[Any]:
        config = TrainConfig(
            lr=3e-3,
            batch_size=256,
            epochs=2.0,
            warmup_steps=3,
            seed=11,
            init_seeds=[20 + i for i in idx],
            device=args.device,
            stack=stack,
        )
        saes, _ = SAETrainer([cfgs[i] for i in idx], [data[i] for i in idx], config).fit()
        return [sae.state_dict() for sae in saes]

    joint, again = train([0, 1, 2, 3], True), train([0, 1, 2, 3], True)
    rows, ok = [], True
    for i in range(len(cfgs)):
        alone = train([i], False)[0]
        gap = max(float((joint[i][k] - t).abs().max()) for k, t in alone.items())
        close = all(torch.allclose(joint[i][k], t, **STACK_TOL) for k, t in alone.items())
        same = all(torch.equal(joint[i][k], again[i][k]) for k in alone)
        rows.append([i, f"{gap:.3g}", "yes" if close else "NO", "yes" if same else "NO"])
        ok = ok and close and same
    table = {
        "columns": ["sae", "max abs stacked vs alone", "within tol", "repeat bitwise"],
        "rows": rows,
    }
    notes = [f"{len(cfgs)} SAEs on {args.device}, tolerance rtol 1e-4 atol 1e-5"]
    return PartResult("stack", "ok" if ok else "failed", notes=notes, data={"table": table})


def _similarity_results(device: str) -> list[dict[str, Any]]:
    """The streamed per-layer similarity of fixed random PT/FT batches on ``device``."""
    import torch

    from layerwise.similarity.accumulator import LayerSimilarityAccumulator

    gen = torch.Generator().manual_seed(0)
    acc = LayerSimilarityAccumulator(n_layers=2, dim=48, n_texts=32, n_blocks=4, device=device)
    for batch in range(4):
        pt = [torch.randn(8, 16, 48, generator=gen) + 5 for _ in range(2)]
        ft = [p + 0.5 * torch.randn(8, 16, 48, generator=gen) for p in pt]
        lengths = torch.randint(4, 17, (8,), generator=gen)
        mask = torch.arange(16)[None, :] < lengths[:, None]
        ids = list(range(8 * batch, 8 * batch + 8))
        acc.update([t.to(device) for t in pt], [t.to(device) for t in ft], mask.to(device), ids)
    return acc.result(n_boot=50, seed=0)


def _sae_metrics(device: str) -> dict[str, float]:
    from layerwise.sae.evaluate import evaluate_sae
    from layerwise.sae.model import SAEConfig, SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(d_in=48, d_sae=192, l1_coefficient=1.0), seed=3)
    return evaluate_sae(sae, _random_acts(3000, 48, seed=4), batch_size=512, device=device)


def _cka(device: str) -> dict[str, float]:
    import torch

    from layerwise.similarity.metrics import linear_cka

    x = torch.from_numpy(_random_acts(500, 48, seed=5))
    return {"cka": linear_cka(x.to(device), (x + torch.sin(3 * x)).to(device))}


def part_agree(args: argparse.Namespace) -> PartResult:
    """The same inputs on the CPU and on the device: similarity and SAE metrics must agree to
    rounding (rtol 1e-4, atol 1e-6), and a repeat on the device must be bitwise equal (the
    same-seed, same-files promise holds on CUDA too)."""
    from layerwise.runtime import seed_everything

    seed_everything(0, device=args.device)
    checks: dict[str, Callable[[str], Any]] = {
        "similarity (streamed)": lambda dev: {
            f"{k}@{r['layer']}": v for r in _similarity_results(dev) for k, v in r.items()
        },
        "linear CKA": _cka,
        "SAE metrics": _sae_metrics,
    }
    rows, ok = [], True
    for name, compute in checks.items():
        cpu, dev, again = compute("cpu"), compute(args.device), compute(args.device)
        gap, close = _max_gap(dev, cpu)
        bitwise = _max_gap(again, dev)[0] == 0.0
        rows.append([name, f"{gap:.3g}", "yes" if close else "NO", "yes" if bitwise else "NO"])
        ok = ok and close and bitwise
    table = {
        "columns": ["check", "max abs CPU vs device", "within tol", "repeat bitwise"],
        "rows": rows,
    }
    notes = [f"CPU vs {args.device}, tolerance rtol {AGREE_RTOL:g} atol {AGREE_ATOL:g}"]
    return PartResult("agree", "ok" if ok else "failed", notes=notes, data={"table": table})


# --------------------------------------------------------------------------------------------
# The pipeline part: a tiny task, the stage scripts twice, the diff
# --------------------------------------------------------------------------------------------
# The task, tiny BERT and params below copy the tests' (conftest.py, reliability_support.py):
# this script runs alone on a GPU machine where the tests' fixtures and pytest are not at hand.

FILLER = (
    "the", "a", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "with", "as",
    "at", "by", "this", "from", "they", "we", "house", "water", "time", "people", "year", "day",
    "city", "car", "book", "table", "window", "street", "morning", "train", "river", "paper",
    "door", "garden",
)  # fmt: skip
KEYWORDS = {"positive": "great", "negative": "awful"}
TINY_SECTIONS = {
    "finetune": {
        "epochs": 1,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "max_length": 32,
        "logging_steps": 2,
        "eval_batch_size": 64,
    },
    "compare": {
        "batch_size": 16,
        "token_budget": 2000,
        "n_boot": 50,
        "n_blocks": 4,
        "probe_folds": 3,
    },
    "sae": {
        "batch_size": 64,
        "epochs": 2,
        "train_tokens": None,
        "warmup_steps": 5,
        "expansion": 2,
        "eval_batch_size": 1024,
    },
    "features": {"top_n": 3, "top_k": 3, "token_min_count": 1},
}
"""The tests' tiny settings (each stage runs in seconds)."""


def write_keyword_csv(path: Path, n: int = 120, seed: int = 0) -> Path:
    """``n`` unique, balanced ``text,label`` rows: 6-12 filler words plus "great" (positive) or
    "awful" (negative) at a random place, as in the tests' keyword task."""
    rng = random.Random(seed)
    labels = ["positive", "negative"] * (n // 2)
    rng.shuffle(labels)
    rows, seen = [], set()
    for label in labels:
        text = None
        while text is None or text in seen:
            words = rng.choices(FILLER, k=rng.randint(6, 12))
            words.insert(rng.randint(0, len(words)), KEYWORDS[label])
            text = " ".join(words)
        seen.add(text)
        rows.append([text, label])
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([["text", "label"], *rows])
    return path


def write_tiny_bert(out: Path) -> Path:
    """A seeded random 2-layer, 32-wide BERT with a word-level vocabulary of the task's words
    (no packaged model needed on the GPU machine)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({*FILLER, *KEYWORDS.values()})]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        vocab_size=len(words),
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_tiny_params(work: Path) -> Path:
    """The repo's params with one keyword task ``kw``, one tiny model, one seed, tiny sections."""
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.update(seed=0, seeds=[0], tasks=["kw"])
    raw["task_defs"] = {
        "kw": {
            "description": "keyword task",
            "source": str(write_keyword_csv(work / "kw.csv")),
            "format": "csv",
            "text_field": "text",
            "label_field": "label",
            "labels": {"kind": "column"},
            "max_train": 60,
            "max_val": 20,
            "max_analysis": 30,
        }
    }
    raw["models"] = {"tiny": {"source": str(write_tiny_bert(work / "tiny")), "layers": [1, 2]}}
    if raw.get("data", {}).get("stats_model"):
        raw["data"]["stats_model"] = "tiny"
    for section, values in TINY_SECTIONS.items():
        raw.setdefault(section, {}).update(values)
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_stage(stage: str, params: Path, root: Path, device: str) -> dict[str, Any]:
    """``stages/<stage>.py`` in a fresh process (as DVC runs it), through :func:`stage_wrap`;
    returns its exit status, wall seconds and peak GPU memory. The stages pick CUDA where they
    see it, so ``device="cpu"`` hides the GPUs from them."""
    argv = ["--task", "kw"] + ([] if stage == "prepare" else ["--model", "tiny", "--seed", "0"])
    result = root / f".{stage}.json"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, str(SCRIPT), "_stage", str(result), str(REPO / "stages" / f"{stage}.py")]
    cmd += [*argv, "--params", str(params), "--root", str(root)]
    subprocess.run(cmd, cwd=root, env=env, check=False)
    if not result.exists():
        return {"rc": -1, "seconds": math.nan, "peak_alloc_mib": 0, "peak_reserved_mib": 0}
    return json.loads(result.read_text())


def stage_wrap(argv: list[str]) -> int:
    """``_stage RESULT SCRIPT ARGS...``: run SCRIPT as ``__main__`` in this process, then write
    its exit status, wall time and torch's peak GPU memory (allocated and reserved) to RESULT."""
    result, script, *rest = argv
    sys.argv = [script, *rest]
    sys.path[0] = str(Path(script).parent)  # as ``python SCRIPT`` would have it
    start, rc = time.perf_counter(), 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except Exception:
        traceback.print_exc()
        rc = 1
    seconds = time.perf_counter() - start
    torch = sys.modules.get("torch")
    used = torch is not None and torch.cuda.is_initialized()
    alloc, reserved = (
        (torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()) if used else (0, 0)
    )
    mib = {
        "peak_alloc_mib": round(alloc / 2**20, 1),
        "peak_reserved_mib": round(reserved / 2**20, 1),
    }
    Path(result).write_text(json.dumps({"rc": rc, "seconds": seconds, **mib}))
    return rc


def part_pipeline(args: argparse.Namespace) -> PartResult:
    """The five stages twice into two roots, then the diff of their metric and result files."""
    missing = missing_modules(PIPELINE_MODULES)
    if missing:
        return PartResult("pipeline", "failed", notes=["missing packages: " + ", ".join(missing)])
    with tempfile.TemporaryDirectory(prefix="gpu_check_pipeline_") as tmp:
        work = Path(tmp)
        runs, failure = run_twice(write_tiny_params(work), work, args.device)
        data: dict[str, Any] = {"table": _stage_table(runs)}
        if failure:
            return PartResult("pipeline", "failed", notes=[failure, "see pipeline.log"], data=data)
        diffs = diff_trees(work / "run1", work / "run2")
    notes = [f"{len(diffs)} file(s) differ between the two runs"]
    notes += [describe(d) for d in diffs[:10]]
    data["diffs"] = [asdict(d) for d in diffs]
    return PartResult("pipeline", "failed" if diffs else "ok", notes=notes, data=data)


def run_twice(
    params: Path, work: Path, device: str
) -> tuple[dict[str, list[dict[str, Any]]], str | None]:
    """Every stage into ``work/run1``, then again into ``work/run2``, printing each stage's wall
    time and peak GPU memory; stops at the first stage that fails and names it."""
    from layerwise.schema import STAGES

    runs: dict[str, list[dict[str, Any]]] = {stage: [] for stage in STAGES}
    for run in ("run1", "run2"):
        (work / run).mkdir()
        for stage in STAGES:
            res = run_stage(stage, params, work / run, device)
            runs[stage].append(res)
            print(
                f"{run} {stage}: exit {res['rc']}, {res['seconds']:.1f} s, peak GPU "
                f"{res['peak_alloc_mib']} MiB allocated, {res['peak_reserved_mib']} MiB reserved",
                flush=True,
            )
            if res["rc"] != 0:
                return runs, f"{run} {stage}: exit {res['rc']}"
    return runs, None


def _stage_table(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    rows = [
        [
            stage,
            *(f"{r['seconds']:.1f}" for r in results),
            *[""] * (2 - len(results)),
            max((r["peak_alloc_mib"] for r in results), default=0),
            max((r["peak_reserved_mib"] for r in results), default=0),
        ]
        for stage, results in runs.items()
        if results
    ]
    columns = ["stage", "run 1 s", "run 2 s", "peak alloc MiB", "peak reserved MiB"]
    return {"columns": columns, "rows": rows}


WORKERS: dict[str, Callable[[argparse.Namespace], PartResult]] = {
    "env": part_env,
    "tests": part_tests,
    "stack": part_stack,
    "agree": part_agree,
    "pipeline": part_pipeline,
}


def work(args: argparse.Namespace) -> int:
    """Inside a part's subprocess: run it and write its result (a crash becomes ``failed``)."""
    try:
        result = WORKERS[args.worker](args)
    except Exception as exc:
        traceback.print_exc()
        result = PartResult(args.worker, "failed", notes=[f"{type(exc).__name__}: {exc}"])
    data = asdict(result)
    data.pop("seconds")
    args.result.write_text(json.dumps(data, allow_nan=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_stage"]:
        return stage_wrap(argv[1:])
    args = parse_args(argv)
    return work(args) if args.worker else drive(args)


if __name__ == "__main__":
    sys.exit(main())
