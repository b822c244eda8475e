"""Scaling: the compare and sae stages of ``sentiment`` at 1x and 4x analysis texts.

``task_defs.sentiment.max_analysis`` 250 vs 1000 (48 vs 192 with ``--quick``), each size on its
own ``--root`` and ``--params`` beside a copy of the repository (``e2e.make_copy``), its split
prepared there. Both reuse the workspace's fine-tuned model, or one fine-tuned in the first
root when the workspace has none (the split's train part changes with ``max_analysis``, but
fine-tuning is not what is timed). The stage scripts run ``--repeats`` times, alternating
sizes, so a slow drift of a shared machine hits both alike; the figure is the time ratio
4x / 1x per repeat (target <= 4.5: nothing in the two stages may grow faster than the data).

Usage::

    python bench/scaling.py                  # 250 vs 1000 texts, 3 repeats (~10 min)
    python bench/scaling.py --quick --repeats 1
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from argparse import Namespace
from pathlib import Path

from e2e import QUICK_PARAMS, BenchError, make_copy, measured, set_params
from timing import REPO, Figure, Measured, bench_parser, judge, report, spread

TASK = "sentiment"
SIZES = (250, 1000)
QUICK_SIZES = (48, 192)
TARGET = 4.5
STAGES = ("compare", "sae")


def ft_dir(item: list[str]) -> Path:
    """The fine-tuned model's folder under a root, for ``--model m --task t --seed s``."""
    return Path("models") / item[1] / item[3] / f"s{item[5]}" / "ft"


def stage_measured(copy: Path, root: Path, stage: str, item: list[str], log: str) -> Measured:
    """``stages/<stage>.py`` of the copy on ``root``'s params and outputs, measured."""
    where = ["--params", str(root / "params.yaml"), "--root", str(root)]
    cmd = [sys.executable, f"stages/{stage}.py", *item, *where]
    return measured(cmd, copy, root / "logs" / f"{log}.log")


def prepare_root(copy: Path, root: Path, n: int, item: list[str], ft_from: Path | None) -> Path:
    """A root with ``n`` analysis texts: its params, its prepared split, and the fine-tuned
    model copied from the root ``ft_from``, else fine-tuned here."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(copy / "params.yaml", root / "params.yaml")
    set_params(root / "params.yaml", {"tasks": [TASK], f"task_defs.{TASK}.max_analysis": n})
    stage_measured(copy, root, "prepare", item[2:4], "prepare")
    if ft_from is not None:
        shutil.copytree(ft_from / ft_dir(item), root / ft_dir(item))
    else:
        print(f"  {n} texts: fine-tuning (no fine-tuned model to reuse)", flush=True)
        stage_measured(copy, root, "finetune", item, "finetune")
    return root


def ratio_figure(
    runs: dict[int, dict[str, list[Measured]]], names: tuple[str, ...], judged: bool
) -> Figure:
    """Time ratio large / small per repeat, of the summed walls of the stages ``names``."""
    small, large = sorted(runs)
    walls = {
        n: [sum(r.wall_s for r in rs) for rs in zip(*(runs[n][m] for m in names), strict=True)]
        for n in runs
    }
    ratios = [b / a for a, b in zip(walls[small], walls[large], strict=True)]
    peak = [max(r.peak_rss_gb for m in names for r in runs[large][m])]
    return Figure(
        f"scaling {TASK} {'+'.join(names)}: time {large}/{small} texts",
        ratios,
        "x",
        f"<= {TARGET:g}",
        judge(ratios, "<=", TARGET, judged=judged),
        f"{small} texts {spread(walls[small])} s, {large} texts {spread(walls[large])} s; "
        f"peak RSS {spread(peak)} GB",
    )


def run(
    work: Path, sizes: tuple[int, int], args: Namespace
) -> dict[int, dict[str, list[Measured]]]:
    """Both roots prepared, then the two stages ``args.repeats`` times, alternating sizes."""
    from layerwise.config import load_params

    copy = make_copy(work / "repo", QUICK_PARAMS if args.quick else None)
    p = load_params(copy / "params.yaml")
    item = ["--model", next(iter(p.models)), "--task", TASK, "--seed", str(p.seeds[0])]
    ft_from = REPO if (REPO / ft_dir(item) / "config.json").is_file() else None
    roots = []
    for n in sizes:
        roots.append(prepare_root(copy, work / str(n), n, item, ft_from))
        ft_from = ft_from or roots[-1]
    runs: dict[int, dict[str, list[Measured]]] = {n: {m: [] for m in STAGES} for n in sizes}
    for r in range(args.repeats):
        for n, root in zip(sizes, roots, strict=True):
            for name in STAGES:
                res = stage_measured(copy, root, name, item, f"{name}-{r}")
                runs[n][name].append(res)
                print(f"  repeat {r + 1}, {n} texts: {name} {res.wall_s:.1f} s", flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(__doc__, f"{QUICK_SIZES[0]} vs {QUICK_SIZES[1]} texts, tiny sizes")
    args = ap.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else SIZES
    print(f"scaling, {sizes[0]} vs {sizes[1]} texts", flush=True)
    with tempfile.TemporaryDirectory(prefix="layerwise-bench-scaling-") as tmp:
        try:
            runs = run(Path(tmp), sizes, args)
        except BenchError as exc:
            print(exc, file=sys.stderr)
            report("scaling", [Figure("scaling: benchmark", [], "", where=str(exc))], args.json)
            return 1
    judged = not args.quick
    figures = [ratio_figure(runs, names, judged) for names in (*((s,) for s in STAGES), STAGES)]
    report(f"scaling ({TASK})", figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
