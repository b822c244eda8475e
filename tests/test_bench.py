"""Tests for the benchmark suite's own logic.

The benchmarks themselves take an hour; what is tested here is what turns their measurements
into the reported figures and verdicts (medians, spreads, targets), the peak-RSS reading of a
command, the shared FVU arithmetic, the results file, and the refusals to run: on a checkout
whose pipeline never ran, and without the peer SAE libraries. The sae-lens peer is also run, on
tiny synthetic data (skipped without sae-lens).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    """bench/ is not a package: its scripts import each other as siblings (``python
    bench/<script>.py`` puts bench/ on the import path), so each is loaded from its path under
    that name, after the modules it imports."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


timing = _load("timing")
e2e = _load("e2e")
scaling = _load("scaling")
compare = _load("compare")
sae = _load("sae")
run_all = _load("run_all")
MB_IN_GB = 1 / 1024


def _measured(wall: float, rss_gb: float, tmp: Path) -> timing.Measured:
    return timing.Measured(0, wall, rss_gb, tmp / "x.log")


# --------------------------------------------------------------------------------------------
# timing: spreads, verdicts, tables


def test_spread_is_median_with_min_and_max() -> None:
    assert timing.spread([3.0, 5.0, 4.0]) == "4 (3-5)"
    assert timing.spread([503.0, 305.0, 704.0]) == "503 (305-704)"
    assert timing.spread([12.345, 10.0, 11.0]) == "11.0 (10.0-12.3)"
    assert timing.spread([0.9]) == "0.9"  # one value: no spread to show
    assert timing.spread([]) == "n/a"
    assert timing.fmt(75754.2) == "75,754"


def test_judge_uses_the_median_or_the_worst_repeat() -> None:
    values = [1.0, 2.0, 10.0]
    assert timing.judge(values, "<=", 5.0) is True  # median 2
    assert timing.judge(values, "<=", 5.0, worst=True) is False  # max 10
    assert timing.judge(values, ">=", 1.5) is True
    assert timing.judge(values, ">=", 1.5, worst=True) is False  # min 1
    assert timing.judge(values, "<=", 5.0, judged=False) is None
    assert timing.judge([], "<=", 5.0) is None


def test_figure_row_shows_spread_count_and_verdict() -> None:
    fig = timing.Figure("no-op dvc repro", [0.9, 1.0, 0.8], "s", "<= 5", True, "a | b")
    assert fig.row() == "| no-op dvc repro | 0.9 (0.8-1) | 3 | s | <= 5 | met | a / b |"
    assert "| NOT met |" in timing.Figure("x", [1.0], "s", met=False).row()
    assert "| - |" in timing.Figure("x", [], "s").row()
    assert timing.markdown_table([fig]).splitlines()[2] == fig.row()


def test_report_writes_figures_that_load_back(tmp_path: Path, capsys) -> None:
    figures = [timing.Figure("a", [1.0, 2.0], "s", "<= 3", True, "where")]
    out = tmp_path / "part.json"
    timing.report("title", figures, str(out), extra={"k": 1})
    assert "## title" in capsys.readouterr().out
    assert timing.load_figures(out) == figures
    assert json.loads(out.read_text())["extra"] == {"k": 1}


def test_repeats_option_refuses_too_few() -> None:
    ap = timing.bench_parser("doc", "quick", least=3)
    assert ap.parse_args(["--repeats", "3", "--quick"]).repeats == 3
    with pytest.raises(SystemExit):
        ap.parse_args(["--repeats", "2"])


# --------------------------------------------------------------------------------------------
# timing: peak RSS of a command


_ALLOC = "b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"


def test_run_measured_reports_exit_code_and_child_peak_rss(tmp_path: Path) -> None:
    log = tmp_path / "alloc.log"
    code = f"import sys; {_ALLOC}; print('done'); sys.exit(3)"
    res = timing.run_measured([sys.executable, "-c", code], tmp_path, None, log)
    assert res.rc == 3
    assert res.peak_rss_gb >= 300 * MB_IN_GB
    assert res.output().strip() == "done" and res.wall_s > 0


def test_run_measured_counts_the_descendants_of_the_command(tmp_path: Path) -> None:
    """DVC runs each stage as its child: the stage's peak must be in the reading."""
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {_ALLOC!r}])"
    res = timing.run_measured([sys.executable, "-c", code], tmp_path, None, tmp_path / "l.log")
    assert res.rc == 0
    assert res.peak_rss_gb >= 300 * MB_IN_GB


def test_peak_rss_of_this_process_covers_what_was_allocated() -> None:
    timing.reset_peak_rss()
    block = np.ones(200 * 1024 * 1024 // 8)
    assert timing.peak_rss_gb() >= block.nbytes / 1024**3


# --------------------------------------------------------------------------------------------
# e2e and scaling figures


def test_cold_repro_figures_are_medians_with_spreads_and_judged(tmp_path: Path) -> None:
    walls = {"prepare@a": [3.0, 5.0, 4.0], "finetune@m-a-0": [500.0, 300.0, 700.0]}
    runs = [{s: _measured(ws[r], 1.0 + r, tmp_path) for s, ws in walls.items()} for r in range(3)]
    tracked = [{"finetune@m-a-0": {"run_s": 400.0, "train_s": 300.0}}] * 3
    figures = {f.name: f for f in e2e.cold_figures(runs, tracked, judged=True)}
    prepare = figures["e2e stage prepare@a"]
    assert prepare.values == [3.0, 5.0, 4.0] and "| 4 (3-5) | 3 |" in prepare.row()
    assert "training 300 (300-300) s" in figures["e2e stage finetune@m-a-0"].where
    total = figures["e2e: dvc repro, clean cache, all stages"]
    assert total.values == [503.0, 305.0, 704.0]  # median 503
    assert total.met is True  # <= 900 s
    assert "(305-704)" in total.row()
    assert "finetune 500 (300-700)" in total.where
    finetune = figures["finetune: all tasks (the finetune stages)"]
    assert finetune.values == [500.0, 300.0, 700.0] and finetune.met is False  # > 480 s
    rss = figures["e2e: max stage peak RSS"]
    assert max(rss.values) == pytest.approx(3.0) and rss.met is True

    slow = [{"finetune@m-a-0": _measured(1000.0, 5.0, tmp_path)}]
    figures = {f.name: f for f in e2e.cold_figures(slow, [{}], judged=True)}
    assert figures["e2e: dvc repro, clean cache, all stages"].met is False
    assert figures["e2e: max stage peak RSS"].met is False
    unjudged = e2e.cold_figures(slow, [{}], judged=False)
    assert all(f.met is None for f in unjudged if f.unit == "s")
    assert [f.met for f in unjudged if f.unit == "GB"] == [False]  # memory: judged at any size


def test_scaling_ratio_is_per_repeat_of_summed_walls(tmp_path: Path) -> None:
    def stage(*walls: float) -> list:
        return [_measured(w, 1.0, tmp_path) for w in walls]

    runs = {
        250: {"compare": stage(10.0, 12.0, 11.0), "sae": stage(50.0, 50.0, 50.0)},
        1000: {"compare": stage(40.0, 30.0, 100.0), "sae": stage(60.0, 60.0, 60.0)},
    }
    compare = scaling.ratio_figure(runs, ("compare",), judged=True)
    assert compare.values == pytest.approx([4.0, 2.5, 100.0 / 11.0])
    assert compare.met is True  # median 4.0 <= 4.5
    assert scaling.ratio_figure(runs, ("sae",), judged=True).values == pytest.approx([1.2] * 3)
    both = scaling.ratio_figure(runs, ("compare", "sae"), judged=True)
    assert both.values == pytest.approx([100.0 / 60.0, 90.0 / 62.0, 160.0 / 61.0])
    assert both.name == "scaling sentiment compare+sae: time 1000/250 texts" and both.met is True
    assert scaling.ratio_figure(runs, ("compare",), judged=False).met is None


def test_stages_run_reads_dvc_output_in_order_without_repeats() -> None:
    out = (
        "Running stage 'sae@m-a-0':\n> python stages/sae.py\n"
        "Running stage 'features@m-a-0':\nRunning stage 'sae@m-a-0':\nRunning stage 'paper':\n"
    )
    assert e2e.stages_run(out) == ["sae@m-a-0", "features@m-a-0", "paper"]


def test_set_params_sets_dotted_keys(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("tasks: [a, b]\ntask_defs:\n  a: {max_analysis: 5, x: 1}\n")
    e2e.set_params(path, {"tasks": ["a"], "task_defs.a.max_analysis": 48, "sae.k": 8})
    import yaml

    assert yaml.safe_load(path.read_text()) == {
        "tasks": ["a"],
        "task_defs": {"a": {"max_analysis": 48, "x": 1}},
        "sae": {"k": 8},
    }


def test_compare_ratio_is_per_pair_and_says_where_the_time_goes() -> None:
    t = {
        "bare": [1.0, 1.0, 2.0],
        "stage": [1.25, 1.0, 2.5],
        "update": [0.1, 0.05, 0.2],
        "bare_rss": [0.8, 0.8, 0.8],
        "stage_rss": [1.0, 1.2, 3.5],
    }
    figures = {f.name: f for f in compare.figures(SimpleNamespace(n_tokens=1000), t, True)}
    assert figures["compare: bare PT+FT forward"].values == [1000.0, 1000.0, 500.0]
    ratio = figures["compare: stage / bare throughput, per pair"]
    assert ratio.values == pytest.approx([0.8, 1.0, 0.8]) and ratio.met is False  # median 0.8
    assert "similarity update 0.1 (0.05-0.2) s" in ratio.where
    assert "forward passes and store writes 1.15 (0.95-2.3) s" in ratio.where
    assert figures["compare: peak RSS, stage pass"].met is False  # worst repeat 3.5 > 3 GB
    unjudged = compare.figures(SimpleNamespace(n_tokens=1000), t, judged=False)
    assert unjudged[2].met is None and unjudged[-1].met is False


# --------------------------------------------------------------------------------------------
# sae: the shared FVU, the verdict at matched sparsity, the peer


def test_heldout_metrics_identity_is_fvu_0_and_the_mean_is_fvu_1() -> None:
    import torch

    acts = np.random.default_rng(0).normal(3.0, 2.0, size=(500, 8)).astype(np.float16)
    mean = torch.from_numpy(np.asarray(acts, dtype=np.float64).mean(0)).float()
    ident = sae.heldout_metrics(lambda x: (x, torch.ones_like(x)), acts, batch=128)
    assert ident["fvu"] == pytest.approx(0.0, abs=1e-12) and ident["l0"] == pytest.approx(8.0)
    as_mean = sae.heldout_metrics(lambda x: (mean.expand_as(x), x * 0), acts, batch=128)
    assert as_mean["fvu"] == pytest.approx(1.0, rel=1e-6) and as_mean["l0"] == 0.0


def _run(impl: str, walls: list[float], fvu: float, l0: float) -> object:
    return sae.Run(impl, "l1", "fp32", 1.5, None, walls, {"fvu": fvu, "l0": l0})


def test_sae_ratio_is_per_repeat_and_judged_at_matched_l0_and_fvu() -> None:
    ours = _run("ours", [10.0, 12.0, 8.0], fvu=0.20, l0=55.0)
    peer = _run("peer", [30.0, 24.0, 32.0], fvu=0.25, l0=51.0)
    fig = sae.ratio_figure("l1", ours, peer, judged=True)
    assert fig.values == pytest.approx([3.0, 2.0, 4.0]) and fig.met is True
    unmatched = _run("peer", [30.0, 24.0, 32.0], fvu=0.25, l0=40.0)  # L0 off by > 10%
    fig = sae.ratio_figure("l1", ours, unmatched, judged=True)
    assert fig.met is False and "L0 not matched" in fig.where
    better = _run("peer", [30.0, 24.0, 32.0], fvu=0.10, l0=55.0)
    fig = sae.ratio_figure("l1", ours, better, judged=True)
    assert fig.met is False and "ours has higher FVU" in fig.where
    slower = _run("ours", [40.0, 40.0, 40.0], fvu=0.20, l0=55.0)
    assert sae.ratio_figure("l1", slower, peer, judged=True).met is False
    assert sae.ratio_figure("l1", ours, peer, judged=False).met is None


def test_sae_refuses_to_run_without_the_peer(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "dictionary_learning", raising=False)
    monkeypatch.setattr(sae.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r"pip install --no-deps dictionary-learning==0\.1\.0"):
        sae.peer_module("trainers.standard")


def test_sae_refuses_to_run_without_sae_lens(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # import sae_lens: ImportError
    with pytest.raises(SystemExit, match=r"make bench installs sae-lens==6\.54\.12"):
        sae.sae_lens_modules()


@pytest.fixture(scope="module")
def tiny_sae_lens_setup(one_torch_thread) -> object:
    """A bench setup on tiny synthetic data (D=16, F=64, 100 steps of 128 rows, warmup and a
    final decay) with sae-lens as the only peer; skipped where sae-lens is not installed. 100
    steps: sae-lens starts ``b_dec`` at zero (ours at the data mean), and the synthetic data's
    large offset takes it a few dozen steps to learn."""
    try:
        modules = sae.sae_lens_modules()
    except SystemExit as err:
        pytest.skip(str(err))
    from layerwise.sae.train import TrainConfig, estimate_scale_factor

    rows = sae.synthetic_store(4096, 16, seed=0)
    train, evals = rows[:3072], rows[3072:]
    config = TrainConfig(
        lr=1e-2, batch_size=128, max_tokens=100 * 128, warmup_steps=5, lr_decay_ratio=0.2
    )
    scale = estimate_scale_factor(train)
    return sae.Setup(train, evals, scale, 64, config, None, modules)


def test_sae_lens_peer_follows_our_lr_schedule_step_for_step(tiny_sae_lens_setup) -> None:
    from layerwise.sae.train import _lr_factor

    setup = tiny_sae_lens_setup
    trainer = sae.sae_lens_trainer(setup, "topk", 4)
    steps, config = setup.steps, setup.config
    warmup, decay = config.warmup(steps), config.decay(steps)
    assert (steps, warmup, decay) == (100, 5, 20)
    lrs = []
    for _ in range(steps):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    expected = [config.lr * _lr_factor(s, steps, warmup, decay) for s in range(steps)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_sae_lens_peer_trains_on_our_batches_and_is_judged_like_the_others(
    tiny_sae_lens_setup,
) -> None:
    setup = tiny_sae_lens_setup
    assert sae.peer_names(setup) == ["sae-lens"]
    topk = sae.train_sae_lens(setup, "topk", 4)
    assert topk.impl == "sae-lens" and topk.label() == "sae-lens topk float32 (k 4)"
    assert np.isfinite(topk.metrics["fvu"]) and 0 < topk.metrics["fvu"] < 0.8
    assert topk.metrics["l0"] == pytest.approx(4.0, abs=0.05)  # TopK: k latents per row
    l1 = sae.train_sae_lens(setup, "l1", 1.0)
    assert np.isfinite(l1.metrics["fvu"]) and 0 < l1.metrics["fvu"] < 0.8
    assert 0 < l1.metrics["l0"] < 64
    again = sae.train_sae_lens(setup, "topk", 4)  # seeded init, same batches: same SAE
    assert again.metrics["fvu"] == pytest.approx(topk.metrics["fvu"], rel=1e-6)
    ours = _run("ours", [1.0], fvu=0.2, l0=4.0)
    fig = sae.ratio_figure("topk", ours, topk, judged=False)
    assert fig.name == "sae topk: ours fp32 / sae-lens tokens/s"
    assert fig.values == pytest.approx([topk.walls[0]])


# --------------------------------------------------------------------------------------------
# run_all: the results file and the refusal to run


def test_write_results_replaces_only_its_own_section(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    old = f"{run_all.RESULTS_BEGIN}\nold table\n{run_all.RESULTS_END}\n"
    path.write_text(f"# Benchmarks\n\nintro\n\n{old}\n## Profiles\n\nkept\n")
    figures = [timing.Figure("a", [1.0, 2.0, 3.0], "s", "<= 5", True)]
    run_all.write_results(path, run_all.results_section("2 cores", figures, ["mode: defaults"]))
    text = path.read_text()
    assert "old table" not in text and "intro" in text and text.endswith("## Profiles\n\nkept\n")
    assert "- machine: 2 cores\n- mode: defaults\n" in text
    assert "| a | 2 (1-3) | 3 | s | <= 5 | met |  |" in text

    fresh = tmp_path / "new.md"
    run_all.write_results(fresh, run_all.results_section("m", figures, []))
    assert fresh.read_text().startswith("# Benchmarks\n\n" + run_all.RESULTS_BEGIN)


def test_run_all_refuses_a_checkout_whose_pipeline_never_ran(tmp_path: Path) -> None:
    """No dvc.lock: exit 2, says to run `make reproduce` first, and writes no results file."""
    bench = tmp_path / "bench"
    shutil.copytree(BENCH, bench, ignore=shutil.ignore_patterns("RESULTS.md", "__pycache__"))
    out = subprocess.run(
        [sys.executable, str(bench / "run_all.py")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out.stderr
    assert "make reproduce" in out.stderr
    assert not (bench / "RESULTS.md").exists()
