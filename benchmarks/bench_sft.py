"""Benchmark: a student's SFT step, batches padded to their longest sample vs padding-free.

The students of `make experiment` train on the world's problems with their derivations
(chat template, problem, worked solution: 60 to 400 tokens), 8 to a batch. Padded, a batch
costs 8 x its longest sample; padding-free (`distill.sft.padding_free`, the default) it
costs the sum of its samples' lengths, in one row whose attention stays within each sample.
Both see the same batches in the same order and learn the same (tests/core/test_sft.py
checks the loss and gradients against each other).

Each mode trains the packaged SmolLM2-135M for --steps steps on the local profile's world
seed pool (the first 120 problems the students' pools start from), the modes alternating
--repeats times so that a drift of the machine's load hits both; the figure is the Trainer's
own wall time (`SFTResult.seconds`: model loading and data preparation excluded). The token
counts are exact: every batch of those steps, as the Trainer's data loader builds it.

    python -m benchmarks.bench_sft                 # SmolLM2-135M, 4 steps of batch 8, 2 repeats
    python -m benchmarks.bench_sft --tiny          # a tiny random-init model: seconds, for tests

Writes benchmarks/results/sft.{json,md}. Measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.common import write_results

MODES = {"padded": False, "padding_free": True}


def world_samples(config, limit: int):
    """The profile's world seed pool (what every student's pool starts from)."""
    from prismatic_assets.pipeline.seed import load_seed

    return load_seed(config.seed, config.world).pool[:limit]


def batch_tokens(model_dir: str, samples, settings) -> dict[str, int]:
    """Tokens the model computes over in the first `settings.max_steps` batches, padded and padding-free."""
    from prismatic_assets.core.sft import _load_student, build_trainer, samples_to_dataset

    model, tokenizer = _load_student(model_dir, settings)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(model, tokenizer, samples_to_dataset(samples), Path(tmp), replace(
            settings, padding_free=False))
        padded = real = 0
        for step, batch in enumerate(trainer.get_train_dataloader()):
            if step == settings.max_steps:
                break
            padded += batch["input_ids"].numel()
            real += int(batch["attention_mask"].sum())
    return {"padded_tokens": padded, "real_tokens": real}


def train_seconds(model_dir: str, samples, settings, padding_free: bool) -> tuple[float, list[float]]:
    from prismatic_assets.core.sft import train_sft

    with tempfile.TemporaryDirectory() as tmp:
        result = train_sft(model_dir, samples, Path(tmp) / "run", replace(settings, padding_free=padding_free),
                           resume=False)
    return result.seconds, [loss for _, loss in result.loss_history]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per measured run")
    parser.add_argument("--batch", type=int, default=8, help="samples per step (the students' 8)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode, the modes alternating")
    parser.add_argument("--tiny", action="store_true", help="a tiny random-init model over 24 problems (tests)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)

    from prismatic_assets.core.models import PACKAGED_MODEL, resolve_model
    from prismatic_assets.core.sft import SFTSettings
    from prismatic_assets.infra.config import load_config

    profile = load_config("local")
    settings = replace(profile.distill.sft, max_steps=args.steps, per_device_batch_size=args.batch,
                       save_steps=10 * args.steps, logging_steps=1, warmup_ratio=0.0)
    assert isinstance(settings, SFTSettings)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            from benchmarks.bench_scale import tiny_proxy

            model_dir, model_name = tiny_proxy(Path(tmp) / "tiny"), "tiny random-init"
            samples = world_samples(profile, 24)
            settings = replace(settings, max_length=256)  # the tiny model's positions (bytes)
        else:
            model_dir, samples, model_name = resolve_model(PACKAGED_MODEL), world_samples(profile, 120), "SmolLM2-135M"
        started = time.time()
        tokens = batch_tokens(model_dir, samples, settings)
        seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
        losses: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for mode, flag in MODES.items():
                took, history = train_seconds(model_dir, samples, settings, flag)
                seconds[mode].append(took)
                losses[mode] = history
                print(f"{mode}: {took:.1f} s for {args.steps} steps", flush=True)
    per_step = {mode: statistics.median(values) / args.steps for mode, values in seconds.items()}
    results: dict[str, Any] = {
        "model": model_name, "samples": len(samples), "steps": args.steps, "batch": args.batch,
        "repeats": args.repeats, "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "seconds": seconds, "seconds_per_step": per_step, "speedup": per_step["padded"] / per_step["padding_free"],
        "losses": losses, "wall_seconds": time.time() - started,
        "load_average_at_end": os.getloadavg()[0], **tokens,
    }
    write_results("sft", results, markdown(results), args.out)


def markdown(r: dict[str, Any]) -> str:
    rows = [f"| {mode} | {r['padded_tokens'] if mode == 'padded' else r['real_tokens']:,} | "
            f"{r['seconds_per_step'][mode]:.2f} | {' / '.join(f'{s:.1f}' for s in r['seconds'][mode])} | "
            f"{r['losses'][mode][-1]:.4f} |" for mode in MODES]
    share = 1 - r["real_tokens"] / r["padded_tokens"]
    return "\n".join([
        f"SFT of {r['model']} on {r['samples']} world problems with derivations, {r['steps']} steps of batch "
        f"{r['batch']}, each mode {r['repeats']} times, alternating (median per step). Padding was "
        f"{share:.0%} of the padded batches' tokens.",
        "",
        "| batches | tokens computed over | seconds per step | runs (s) | loss at the last step |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Padding-free is {r['speedup']:.2f}x the padded speed. Wall time {r['wall_seconds'] / 60:.1f} min; load "
        f"average {r['load_average_at_end']:.2f} at the end.",
    ])


if __name__ == "__main__":
    main()
