"""Sweep the SAE sparsity knob on one run's activation stores: coefficient (or k) vs L0 vs FVU.

Usage: python bench/sae_sweep.py [--store data/activations/minilm-l6/sentiment/s0] [--layer 4]
Prints a Markdown table; used to pick the default (the knee: lowest FVU with L0 <= 64 and
dead <= 10%).
"""

from __future__ import annotations

import argparse

import torch
from timing import timed

from layerwise.activations import ActivationStore
from layerwise.sae.evaluate import evaluate_sae
from layerwise.sae.model import SAEConfig
from layerwise.sae.train import SAETrainer, TrainConfig, estimate_scale_factor


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", default="data/activations/minilm-l6/sentiment/s0")
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--which", default="ft")
    ap.add_argument("--expansion", type=float, default=4.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=400_000)
    ap.add_argument("--l1", default="1,2,4,8")
    ap.add_argument("--k", default="16,32,64")
    ap.add_argument(
        "--decay", type=float, default=0.2, help="final fraction of steps with linear lr decay"
    )
    ap.add_argument("--fp32", action="store_true", help="train in float32 (default: bf16 autocast)")
    return ap.parse_args(argv)


def sweep_configs(args: argparse.Namespace, d_in: int, scale: float) -> list[SAEConfig]:
    """One SAE per L1 coefficient and per k, all of the same width and scale."""
    d_sae = int(args.expansion * d_in)
    l1 = [float(c) for c in args.l1.split(",")] if args.l1 else []
    ks = [int(k) for k in args.k.split(",")] if args.k else []
    return [
        SAEConfig(d_in=d_in, d_sae=d_sae, sparsity="l1", l1_coefficient=c, scale_factor=scale)
        for c in l1
    ] + [SAEConfig(d_in=d_in, d_sae=d_sae, sparsity="topk", k=k, scale_factor=scale) for k in ks]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    name = f"{args.which}_L{args.layer}"
    train = ActivationStore.open(args.store, "train").acts(name)
    evals = ActivationStore.open(args.store, "analysis").acts(name)
    cfgs = sweep_configs(args, train.shape[1], estimate_scale_factor(train))
    config = TrainConfig(
        lr=args.lr,
        batch_size=args.batch_size,
        max_tokens=args.tokens,
        warmup_steps=50,
        seed=0,
        lr_decay_ratio=args.decay,
        autocast_dtype=None if args.fp32 else torch.bfloat16,
    )
    wall, (saes, _) = timed(lambda: SAETrainer(cfgs, [train] * len(cfgs), config).fit())
    print(
        f"store {args.store} {name}: {train.shape[0]} train tokens, {evals.shape[0]} eval; "
        f"{args.tokens} tokens/SAE, batch {args.batch_size}, lr {args.lr}; {wall:.0f} s for "
        f"{len(cfgs)} SAEs"
    )
    print("| sparsity | coef / k | L0 | FVU | dead % | dense % |")
    print("|---|---|---|---|---|---|")
    for cfg, sae in zip(cfgs, saes, strict=True):
        m = evaluate_sae(sae, evals)
        knob = cfg.l1_coefficient if cfg.sparsity == "l1" else cfg.k
        print(
            f"| {cfg.sparsity} | {knob:g} | {m['l0']:.1f} | {m['fvu']:.3f} | "
            f"{100 * m['dead_frac']:.1f} | {100 * m['dense_frac']:.1f} |"
        )


if __name__ == "__main__":
    main()
