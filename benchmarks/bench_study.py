"""Benchmark: the correlation study's wall time split by stage, to plan more sets or GPUs from figures.

Runs `pipeline.study.run_study` in this process (no Dagster, no MLflow: the work of `make
study` without its orchestration overhead) on a profile's `study` block, in a fresh data
directory, and reports the wall time of each stage: set building (pool generation,
verification, draws), gradients (the pool's or the members' projected gradients), measures
(G-Vendi, embedding Vendi's hidden states, text metrics), training and evaluation (summed
over the students; `students wall` is the stage's wall clock, which is smaller on Ray), and
per student the seconds per SFT step and per evaluated problem.

    python -m benchmarks.bench_study                    # the local profile: the real `make study` work
    python -m benchmarks.bench_study --tiny             # a tiny random-init model, 3 sets: proves it runs
    python -m benchmarks.bench_study --probe            # a few minutes: per-unit costs and the projected total
    python -m benchmarks.bench_study --probe --tiny     # the same on the tiny model: proves it runs

`--probe` measures the units the study is made of on the profile's proxy and student (8
pool gradients, 8 hidden states, SFT of 1 and 4 steps at the study's batch, 16 held-out
problems answered to `study.max_tokens`) and multiplies them out for the profile's study
settings: the arithmetic behind the defaults, redone on the machine at hand.

Writes benchmarks/results/study.{json,md} (study_tiny.* with --tiny, study_probe*.* with
--probe). Run it on an otherwise idle machine: the figures are wall-clock times, and the load average is recorded.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_results


def tiny_config(root: Path):
    """A tiny study: a random-init 2-layer Llama with the packaged tokenizer as proxy and student."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from prismatic_assets.core.models import PACKAGED_MODEL, resolve_model
    from prismatic_assets.infra.config import build_config

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(PACKAGED_MODEL))
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    folder = root / "tiny-model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return build_config({
        "data_dir": str(root / "data"), "proxy": {"model": str(folder), "max_length": 128},
        "projection": {"dim": 32},
        "distill": {"student": str(folder), "launcher": "python", "sft": {"max_length": 128}},
        "study": {"families": ["basic_arithmetic", "gcd", "leg_counting"], "levels": [0], "pool_size": 36,
                  "designs": ["span:1:1", "span:3:1", "single-cluster"], "set_size": 6, "max_steps": 4,
                  "save_steps": 2, "batch_size": 2, "eval_per_family": 2, "ood_families": ["chain_sum"],
                  "max_tokens": 8, "bootstrap": 200}})


def _timed(fn):
    """(result, wall seconds, CPU seconds of this process and its children)."""
    import resource

    def cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    wall, before = time.perf_counter(), cpu()
    out = fn()
    return out, time.perf_counter() - wall, cpu() - before


def _proxy_costs(config, pool) -> dict:
    """Wall and CPU seconds per sample of a gradient and a hidden state, through the Embedder
    role; the proxy is freed on return, before the SFT runs."""
    from prismatic_assets.pipeline.embeddings import build_embedder

    head = pool[:8]
    units: dict = {}
    embedder, units["proxy_load_s"], _ = _timed(functools.partial(build_embedder, config.proxy, config.projection,
                                                                  config.compute.batch_size))
    _, wall, cpu = _timed(lambda: list(embedder.embed_chunks(head)))
    units["gradient_s"], units["gradient_cpu_s"] = wall / len(head), cpu / len(head)
    _, wall, cpu = _timed(lambda: list(embedder.hidden_chunks(head, max_length=config.proxy.max_length,
                                                              batch_size=len(head))))
    units["hidden_s"], units["hidden_cpu_s"] = wall / len(head), cpu / len(head)
    return units


def probe(config, root: Path) -> dict:
    """Per-unit costs of the study on this machine, and the study's total projected from them."""
    import subprocess

    from prismatic_assets.core.evaluation import build_eval_prompt
    from prismatic_assets.core.generation import SamplingConfig
    from prismatic_assets.core.study_sets import parse_designs
    from prismatic_assets.infra.engines import open_engine
    from prismatic_assets.pipeline.distill import read_result, sft_command, write_training_set
    from prismatic_assets.pipeline.study import PROCEDURAL, prepare, study_distill

    s = config.study
    prepared = prepare(s)
    pool = prepared.pool.samples
    units = _proxy_costs(config, pool)
    data = write_training_set(pool[:max(s.batch_size * 4, 8)], root / "train.jsonl")
    runs = {}
    for steps in (1, 4):
        distill = study_distill(config.replace(study=s.model_copy(update={"max_steps": steps,
                                                                          "save_steps": steps})))
        _, wall, cpu = _timed(functools.partial(subprocess.run, sft_command(distill, data, root / f"sft-{steps}"),
                                                check=True, capture_output=True))
        runs[steps] = (wall, cpu)
    units["sft_step_s"] = (runs[4][0] - runs[1][0]) / 3
    units["sft_step_cpu_s"] = (runs[4][1] - runs[1][1]) / 3
    units["sft_fixed_s"] = runs[1][0] - units["sft_step_s"]  # process start, load, one checkpoint, final save
    engine = open_engine(s.engine, model=read_result(root / "sft-4")["final_model_dir"])
    sampling = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=s.max_tokens, seed=0)
    items = [i for items in prepared.tasks.values() for i in items][:16]
    conversations = [[{"role": "user", "content": build_eval_prompt(getattr(i, "sample", i).prompt)}] for i in items]
    engine.chat(conversations[:1], sampling)  # load the model
    _, wall, cpu = _timed(lambda: engine.chat(conversations, sampling))
    engine.close()
    units["eval_problem_s"], units["eval_problem_cpu_s"] = wall / len(items), cpu / len(items)
    designs = parse_designs(s.designs)
    m = len(designs)
    embedded = len(pool) if any(d.needs_vectors for d in designs) else m * s.set_size
    problems = sum(len(v) for v in prepared.tasks.values())
    projected = {"gradients": embedded * units["gradient_s"], "measures": m * s.set_size * units["hidden_s"],
                 "training": m * (s.max_steps * units["sft_step_s"] + units["sft_fixed_s"]),
                 "evaluation": (m + 1) * problems * units["eval_problem_s"]}
    projected["total"] = sum(projected.values())
    return {"units": units, "projected_seconds": projected, "sets": m, "set_size": s.set_size,
            "embedded": embedded, "problems": problems, "max_steps": s.max_steps, "batch_size": s.batch_size,
            "pool": s.pool if s.pool != PROCEDURAL else f"procedural ({len(pool)} after checks)"}


def probe_markdown(result: dict) -> str:
    u, p = result["units"], result["projected_seconds"]
    return "\n".join([
        f"Study probe: per-unit costs on this machine (load average {result['load_start']} at the start), and the "
        f"profile's study ({result['sets']} sets of {result['set_size']}, {result['max_steps']} steps at batch "
        f"{result['batch_size']}, {result['embedded']} gradients, {result['problems']} held-out problems per model) "
        "projected from them.", "",
        "| unit | wall s | CPU s |", "|---|---|---|",
        f"| gradient, per sample | {u['gradient_s']:.2f} | {u['gradient_cpu_s']:.2f} |",
        f"| hidden state, per sample | {u['hidden_s']:.3f} | {u['hidden_cpu_s']:.3f} |",
        f"| SFT step at batch {result['batch_size']} | {u['sft_step_s']:.2f} | {u['sft_step_cpu_s']:.2f} |",
        f"| SFT process start, load and saves | {u['sft_fixed_s']:.1f} | |",
        f"| evaluated problem | {u['eval_problem_s']:.2f} | {u['eval_problem_cpu_s']:.2f} |", "",
        "| stage | projected wall |", "|---|---|"] +
        [f"| {k} | {v / 60:.1f} min |" for k, v in p.items()])


def markdown(result: dict) -> str:
    s = result["seconds"]
    lines = [f"Study: {result['sets']} sets of {result['set_size']} from a pool of {result['n_pool']}, "
             f"{result['students']} students (+ the base model) x {result['max_steps']} SFT steps at batch "
             f"{result['batch_size']}, {result['eval_problems']} held-out problems each; compute "
             f"{result['backend']}; load average {result['load_start']} at the start, {result['load_end']} at the "
             "end.", "",
             "| stage | wall time (s) | share |", "|---|---|---|"]
    total = result["total_seconds"]
    for name in ("sets", "gradients", "measures", "training", "evaluation"):
        lines.append(f"| {name} | {s.get(name, 0.0):.1f} | {s.get(name, 0.0) / total:.0%} |")
    lines.append(f"| students wall (training + evaluation as run) | {s.get('students_wall', 0.0):.1f} | "
                 f"{s.get('students_wall', 0.0) / total:.0%} |")
    lines.append(f"| total | {total:.1f} | |")
    lines += ["", "| student | train s | s per SFT step (incl. process start) | evaluation s | s per problem |",
              "|---|---|---|---|---|"]
    for row in result["per_student"]:
        per_step = f"{row['train_seconds'] / row['steps']:.2f}" if row["steps"] else "-"
        lines.append(f"| {row['set']} | {row['train_seconds']:.1f} | {per_step} | {row['eval_seconds']:.1f} | "
                     f"{row['eval_seconds'] / result['eval_problems']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=None, help="profile name or YAML path (default: local)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random-init model and 3 sets (seconds)")
    parser.add_argument("--probe", action="store_true", help="per-unit costs and the projected total (minutes)")
    parser.add_argument("--data-dir", help="where the run's store and models go (default: a temporary folder, "
                                           "removed afterwards)")
    args = parser.parse_args()

    from prismatic_assets.infra.config import load_config
    from prismatic_assets.pipeline.study import BASE, run_study
    from prismatic_assets.store.store import MetadataStore

    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        root = Path(args.data_dir or tmp)
        config = tiny_config(root) if args.tiny else load_config(args.profile).replace(data_dir=str(root / "data"))
        if args.probe:
            load_start = [round(x, 2) for x in os.getloadavg()]
            result = probe(config, root)
            result.update(load_start=load_start, load_end=[round(x, 2) for x in os.getloadavg()])
            write_results("study_probe_tiny" if args.tiny else "study_probe", result, probe_markdown(result))
            return 0
        load_start = [round(x, 2) for x in os.getloadavg()]
        began = time.perf_counter()
        report = run_study(MetadataStore(config.store_path), config, log=lambda line: print(line, flush=True))
        total = time.perf_counter() - began
        s = config.study
        problems = s.eval_per_family * ((len(s.families) if s.pool == "procedural" else 0) + len(s.ood_families))
        result = {
            "profile": "tiny" if args.tiny else config.profile, "backend": config.compute.backend,
            "sets": len(report.sets), "set_size": s.set_size, "n_pool": report.n_pool,
            "students": sum(1 for st in report.students if st.set_name != BASE), "max_steps": s.max_steps,
            "batch_size": s.batch_size, "eval_problems": problems, "seconds": report.seconds,
            "total_seconds": total, "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()],
            "failed": report.failed, "study_id": report.study_id,
            "per_student": [{"set": st.set_name, "steps": st.steps or 0, "train_seconds": st.train_seconds or 0.0,
                             "eval_seconds": st.eval_seconds or 0.0} for st in report.students],
        }
    write_results("study_tiny" if args.tiny else "study", result, markdown(result))
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
