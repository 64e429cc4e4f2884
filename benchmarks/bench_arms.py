"""The arms replayed: whole runs of the world with several seeds, and redraws of each acceptance.

One `make demo` is one draw of everything: the seed pool, the generator, the gradients and
each arm's acceptance. This reruns the whole world `--seeds` times (world.seed = 0, 1, ...:
a new seed pool, new candidates, new gradients; each run in its own store, timed) through the
same pipeline functions as the demo (`pipeline.arms.run_arm_round`, without Dagster). Within
each round it then redraws the acceptance step `--draws` times on the same candidates (same
pool, same vectors, other acceptance seeds): the spread of one round's result from the draw
alone. The run itself continues from its own (draw 0) acceptances.

    python -m benchmarks.bench_arms [--profile local] [--seeds 5] [--first-seed 0] [--draws 20] [--ratios 0.05,0.1,0.2]
    python -m benchmarks.bench_arms --tiny          # a tiny random-init proxy and a tiny world: seconds
    python -m benchmarks.bench_arms --combine a/arms.json b/arms.json   # one summary of runs made apart

Per ratio (the clustering K = ratio x pool), round and arm: mean +- sd over seeds of the G-Vendi
gain and of the cell entropy after the round, the same over every redraw, and in how many
seeds (and redraws) each prismatic arm's gain was >= the random arm's. With several ratios
each seed's runs share one store's gradient cache (the arm tables are cleared between
ratios), so a ratio after the first computes only the candidates the others did not offer.
`--combine` reads the arms.json files of earlier runs (other seeds, made at other times or in
other folders) and writes one summary over all their runs, without running anything: the
files must agree on the redraws and ratios, and no world seed may appear twice.
Writes benchmarks/results/arms.{json,md} (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_results
from prismatic_assets.core.world import cell_coverage
from prismatic_assets.infra.config import Config, build_config, load_config
from prismatic_assets.pipeline.arms import (
    FILTERED_ARMS,
    ArmRoundReport,
    acceptance_seed,
    arm_pool,
    cell_of,
    choose,
    run_arm_round,
)
from prismatic_assets.pipeline.embeddings import embed_samples, open_embedder, pool_vectors
from prismatic_assets.pipeline.experiment import arm_round_guards
from prismatic_assets.pipeline.scores import score_vectors
from prismatic_assets.pipeline.seed import load_seed, store_seed
from prismatic_assets.store.arms_tables import clear_arm_rounds
from prismatic_assets.store.store import MetadataStore

#: The --tiny world: four families, a 24-problem pool, 2 rounds of 4 requests, budget 3.
TINY = {"seed": {"source": "world", "holdout_fraction": 0.0}, "projection": {"dim": 32},
        "proxy": {"max_length": 256}, "clustering": {"ratio": 0.2}, "evaluation": {"gsm_symbolic": 0},
        "world": {"families": ["basic_arithmetic", "gcd", "leg_counting", "letter_counting"],
                  "pool": {"size": 24, "family_zipf": 1.0}, "held_out_per_family": 2},
        "arms": {"rounds": 2, "requests_per_round": 4, "budget": 3}}


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in override.items()}}
    return override


def _configure(base: Config, seed: int, ratio: float) -> Config:
    return build_config(_merge(base.model_dump(mode="json"), {"world": {"seed": seed}, "clustering": {"ratio": ratio}}))


@contextlib.contextmanager
def _tiny_proxy():
    """A random-init 2-layer Llama with the packaged tokenizer, CountSketch to d = 32 (the --tiny proxy)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from prismatic_assets.core.gradients import GradientEmbedder, GradientSpec
    from prismatic_assets.core.models import PACKAGED_MODEL, model_fingerprint, resolve_model
    from prismatic_assets.core.projection import ProjectionSpec
    from prismatic_assets.pipeline.embedder import LocalEmbedder

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(PACKAGED_MODEL))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=2048, tie_word_embeddings=True,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id)).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model's ops are too small to split over threads
    try:
        yield LocalEmbedder(GradientEmbedder(model, tokenizer, ProjectionSpec(dim=32), GradientSpec(max_length=256),
                                             model_fingerprint(model, tokenizer)), name="tiny random-init Llama")
    finally:
        torch.set_num_threads(threads)


def redraws(store: MetadataStore, report: ArmRoundReport, config: Config, seed_pool, draws: int, dim: int
            ) -> dict[str, dict[str, list[float]]]:
    """{arm: {"gain": [...], "entropy": [...]}} of `draws` acceptance draws (seeds 1..draws) on the
    round's own candidates, each from the pool the round started from."""
    out = {}
    for arm, result in report.arms.items():
        pool = arm_pool(store, arm, report.round, seed_pool)
        before_vectors = pool_vectors(store, pool, report.embedding_key, dim).vectors
        before = score_vectors(before_vectors, config.score.q).score
        judged = [c for c in result.candidates if c.reason is None]
        vectors = pool_vectors(store, [c.sample for c in judged], report.embedding_key, dim).vectors
        sizes = [c.cluster_size for c in judged]
        sparse = [bool(c.in_sparse) for c in judged]
        cells = [cell_of(s) for s in pool]
        gains, entropies = [], []
        for d in range(1, draws + 1):
            picks = choose(arm, len(judged), config.arms.budget, rng_seed=acceptance_seed(config.world.seed,
                                                                                          report.round, arm, d),
                           cluster_sizes=sizes, in_sparse=sparse)
            gains.append(score_vectors(np.vstack([before_vectors, vectors[picks]]), config.score.q).score - before)
            entropies.append(cell_coverage(cells + [(judged[i].written.family, judged[i].written.level)
                                                    for i in picks])[1])
        out[arm] = {"gain": gains, "entropy": entropies}
    return out


def run_world(store: MetadataStore, embedder, config: Config, draws: int, fresh: bool) -> dict[str, Any]:
    """One whole run: the seed pool (when `fresh`), every round, the redraws of each round."""
    started = time.perf_counter()
    seed = load_seed(config.seed, config.world)
    if fresh:
        store_seed(store, seed, "bench")
        embed_samples(seed.pool, embedder, store)
    eval_texts, held_out = arm_round_guards(store, config, "world", [s.sample_id for s in seed.holdout])
    rounds = []
    for r in range(1, config.arms.rounds + 1):
        report = run_arm_round(store, r, proxy=lambda: contextlib.nullcontext(embedder), config=config,
                               seed_source="world", eval_texts=eval_texts, held_out=held_out)
        rounds.append({"round": r, "arms": {arm: {"gain": res.gain, "entropy": res.cell_entropy_after,
                                                  "cells": res.cells_after, "accepted": len(res.accepted),
                                                  "passed_filter": sum(1 for c in res.verified if c.in_sparse),
                                                  "verified": len(res.verified)}
                                            for arm, res in report.arms.items()},
                       "redraws": redraws(store, report, config, seed.pool, draws, embedder.dim)})
    return {"seconds": time.perf_counter() - started, "rounds": rounds}


def _mean_sd(values, sign: str = "+") -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():{sign}.2f} +- {values.std():.2f}" if len(values) else "-"


def summarize(runs: dict[float, list[dict]], arms, draws: int) -> tuple[dict, list[str]]:
    """Per ratio, round and arm: figures over seeds and over redraws; counts of prismatic >= random."""
    table, lines = {}, []
    filtered = [a for a in arms if a in FILTERED_ARMS]
    for ratio, per_seed in runs.items():
        lines += ["", f"### clustering ratio {ratio:g} ({len(per_seed)} seeds x {draws} redraws)", "",
                  "| round | arm | gain over seeds | gain over redraws | cell entropy over seeds | "
                  "cell entropy over redraws | seeds >= random (gain) | redraws >= random (gain) |",
                  "|---|---|---|---|---|---|---|---|"]
        for i, _ in enumerate(per_seed[0]["rounds"]):
            rnd = per_seed[0]["rounds"][i]["round"]
            for arm in arms:
                seeds = [run["rounds"][i]["arms"][arm] for run in per_seed]
                red = [run["rounds"][i]["redraws"][arm] for run in per_seed]
                row = {"gain_seeds": [s["gain"] for s in seeds], "entropy_seeds": [s["entropy"] for s in seeds],
                       "gain_redraws": [g for r in red for g in r["gain"]],
                       "entropy_redraws": [e for r in red for e in r["entropy"]]}
                versus = "-", "-"
                if arm in filtered and "random" in arms:
                    rand = [run["rounds"][i]["arms"]["random"]["gain"] for run in per_seed]
                    rand_red = [run["rounds"][i]["redraws"]["random"]["gain"] for run in per_seed]
                    row["seeds_at_least_random"] = sum(a >= b for a, b in zip(row["gain_seeds"], rand))
                    row["redraws_at_least_random"] = sum(a >= b for r, q in zip(red, rand_red)
                                                         for a, b in zip(r["gain"], q))
                    versus = (f"{row['seeds_at_least_random']} of {len(per_seed)}",
                              f"{row['redraws_at_least_random']} of {len(per_seed) * draws}")
                table[f"{ratio:g}/{rnd}/{arm}"] = row
                lines.append(f"| {rnd} | {arm} | {_mean_sd(row['gain_seeds'])} | {_mean_sd(row['gain_redraws'])} | "
                             f"{_mean_sd(row['entropy_seeds'], '')} | {_mean_sd(row['entropy_redraws'], '')} | "
                             f"{versus[0]} | {versus[1]} |")
    return table, lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=None, help="profile the world and arms come from (default: local)")
    parser.add_argument("--seeds", type=int, default=5, help="whole runs, world.seed = 0 .. seeds-1 (default 5)")
    parser.add_argument("--first-seed", type=int, default=0, help="world.seed of the first run (default 0): "
                                                                 "more seeds later, in another --work or --out")
    parser.add_argument("--draws", type=int, default=20, help="acceptance redraws per round (default 20)")
    parser.add_argument("--ratios", default=None, help="clustering ratios to compare, e.g. 0.05,0.1,0.2 (default: "
                                                       "the profile's clustering.ratio)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random-init proxy and a tiny world (a test run)")
    parser.add_argument("--work", default=None, help="folder for the runs' stores (default: a temporary folder, "
                                                     "removed at the end)")
    parser.add_argument("--out", help="folder for arms.json / arms.md (default benchmarks/results)")
    parser.add_argument("--combine", nargs="+", metavar="ARMS_JSON",
                        help="summarize the runs of these arms.json files together (runs nothing)")
    args = parser.parse_args(argv)
    base = load_config(args.profile)
    if args.tiny:
        base = build_config(_merge(base.model_dump(mode="json"), TINY))
    if args.combine:
        combine(args.combine, base, args.out)
        return
    ratios = [float(r) for r in args.ratios.split(",")] if args.ratios else [base.clustering.ratio]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-arms-"))
    runs: dict[float, list[dict]] = {ratio: [] for ratio in ratios}
    began = time.perf_counter()
    proxy = _tiny_proxy() if args.tiny else open_embedder(base.proxy, base.projection, base.compute)
    try:
        with proxy as embedder:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                store = MetadataStore(work / f"seed-{seed}" / "prismatic.duckdb")
                for j, ratio in enumerate(ratios):
                    if j:
                        clear_arm_rounds(store)  # the next ratio starts from the seed pool again
                    run = run_world(store, embedder, _configure(base, seed, ratio), args.draws, fresh=j == 0)
                    runs[ratio].append(run)
                    print(f"[bench_arms] seed {seed}, ratio {ratio:g}: {run['seconds']:.0f} s", flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    write_summary({f"{r:g}": per for r, per in runs.items()}, {f"{r:g}": seeds for r in ratios}, base,
                  args.draws, args.tiny, time.perf_counter() - began, args.out)


def write_summary(runs: dict[str, list[dict]], seeds: dict[str, list[int]], base: Config, draws: int, tiny: bool,
                  total: float, out: str | None, sources: list[str] | None = None) -> None:
    """arms.{json,md}: the summary over `runs` ({ratio: [run of each seed]}) and every run's figures."""
    ratios = [float(r) for r in runs]
    table, lines = summarize({float(r): per for r, per in runs.items()}, base.arms.arms, draws)
    seconds = {r: [run["seconds"] for run in per] for r, per in runs.items()}
    proxy_name = "tiny proxy" if tiny else base.proxy.model
    per_run = "; ".join(f"ratio {r}: " + ", ".join(f"{s:.0f}" for s in v) + " s" for r, v in seconds.items())
    all_seeds = sorted({s for per in seeds.values() for s in per})
    head = [f"# Arms over {len(all_seeds)} seeds (world.seed {_ranges(all_seeds)}) x "
            f"{draws} redraws ({proxy_name}, budget {base.arms.budget}, "
            f"{base.arms.rounds} rounds, {base.arms.requests_per_round} requests per arm per round)", "",
            f"Wall time {total:.0f} s in all; per whole run (seed pool, rounds, redraws): {per_run}."]
    if sources:
        head += ["", "Combined from " + ", ".join(sources) + " (runs made apart, each file naming its machine)."]
    write_results("arms", {"seeds": len(all_seeds), "first_seed": all_seeds[0], "world_seeds": seeds,
                           "draws": draws, "ratios": ratios, "tiny": tiny, "seconds": seconds,
                           "total_seconds": total, "summary": table, "runs": runs,
                           **({"combined_from": sources} if sources else {})},
                  "\n".join(head + lines) + "\n", directory=Path(out) if out else None)


def _ranges(seeds: list[int]) -> str:
    """[0, 1, 2, 4] -> '0..2, 4'."""
    runs: list[list[int]] = []
    for seed in seeds:
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}..{r[-1]}" for r in runs)


def combine(paths: list[str], base: Config, out: str | None) -> None:
    """One summary over the runs of several arms.json files (see the module docstring)."""
    runs: dict[str, list[dict]] = {}
    seeds: dict[str, list[int]] = {}
    draws: int | None = None
    tiny: bool | None = None
    total = 0.0
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--combine: cannot read {path}: {exc}") from None
        if draws is not None and (data["draws"] != draws or data["tiny"] != tiny):
            raise SystemExit(f"--combine: {path} has {data['draws']} redraws (tiny={data['tiny']}), the files "
                             f"before it {draws} (tiny={tiny}): combine runs made alike")
        draws, tiny = data["draws"], data["tiny"]
        file_seeds = data.get("world_seeds") or {
            r: list(range(data.get("first_seed", 0), data.get("first_seed", 0) + len(per)))
            for r, per in data["runs"].items()}
        for ratio, per in data["runs"].items():
            taken = set(seeds.get(ratio, [])) & set(file_seeds[ratio])
            if taken:
                raise SystemExit(f"--combine: {path} repeats world seed(s) {sorted(taken)} at ratio {ratio}: "
                                 "each seed once")
            runs.setdefault(ratio, []).extend(per)
            seeds.setdefault(ratio, []).extend(file_seeds[ratio])
        total += data["total_seconds"]
    if len({len(v) for v in runs.values()}) > 1:
        counts = {r: len(v) for r, v in runs.items()}
        raise SystemExit(f"--combine: the files give different seeds per ratio ({counts}): combine files with the "
                         "same ratios")
    write_summary(runs, seeds, base, int(draws or 0), bool(tiny), total, out, sources=[str(p) for p in paths])

if __name__ == "__main__":
    main()
