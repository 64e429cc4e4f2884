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
    python -m benchmarks.bench_study --from-run data --wall 2712   # the split of a finished `make study`

`--probe` measures the units the study is made of on the profile's proxy and student (8
pool gradients, 8 hidden states, SFT of 1 and 4 steps at the study's batch, 16 held-out
problems answered to `study.max_tokens`) and multiplies them out for the profile's study
settings: the arithmetic behind the defaults, redone on the machine at hand.

`--from-run DATA_DIR` runs nothing: it reads the split of a study already run through `make
study` (the stage times its parent MLflow run logged as seconds/*, each student's train and
evaluation seconds from the store), with `--wall` the command's own wall time as measured
by the caller (the Dagster run's start and model loads included).

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


def _result(config, report, seconds: dict, total: float, load_start, load_end, profile: str) -> dict:
    from prismatic_assets.pipeline.study import BASE

    s = config.study
    problems = s.eval_per_family * ((len(s.families) if s.pool == "procedural" else 0) + len(s.ood_families))
    return {
        "profile": profile, "backend": config.compute.backend,
        "sets": len(report.sets), "set_size": s.set_size, "n_pool": report.n_pool,
        "students": sum(1 for st in report.students if st.set_name != BASE), "max_steps": s.max_steps,
        "batch_size": s.batch_size, "eval_problems": problems, "seconds": seconds,
        "total_seconds": total, "load_start": load_start, "load_end": load_end,
        "failed": report.failed, "study_id": report.study_id,
        "per_student": [{"set": st.set_name, "steps": st.steps or 0, "train_seconds": st.train_seconds or 0.0,
                         "eval_seconds": st.eval_seconds or 0.0} for st in report.students],
    }


def from_run(config, wall: float, load: str = "-") -> dict:
    """The stage split of the study a `make study` ran in config.data_dir (see the module docstring)."""
    from mlflow.tracking import MlflowClient

    from prismatic_assets.core.tracking import default_tracking_uri
    from prismatic_assets.pipeline.study import load_report
    from prismatic_assets.store.store import MetadataStore

    report = load_report(MetadataStore(config.store_path), config)
    if report is None:
        raise SystemExit(f"{config.store_path} holds no study for the profile's settings: run `make study` first")
    client = MlflowClient(tracking_uri=config.tracking.tracking_uri or default_tracking_uri(config.data_path))
    runs = [r for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id], f"tags.study_id = '{report.study_id}' and "
                                                           "tags.stage = 'study'")
            if "mlflow.parentRunId" not in r.data.tags and r.info.status == "FINISHED"]
    if not runs:
        raise SystemExit(f"no finished MLflow study run for study {report.study_id} under {config.data_path}: "
                         "the stage times are logged when the study finishes")
    parent = max(runs, key=lambda r: r.info.start_time)
    seconds = {k.split("/", 1)[1]: v for k, v in parent.data.metrics.items() if k.startswith("seconds/")}
    start, _, end = load.partition(",")
    return {**_result(config, report, seconds, wall, start.strip() or "-", end.strip() or "-", config.profile),
            "from_run": str(config.data_path),
            "mlflow_run_id": parent.info.run_id}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=None, help="profile name or YAML path (default: local)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random-init model and 3 sets (seconds)")
    parser.add_argument("--probe", action="store_true", help="per-unit costs and the projected total (minutes)")
    parser.add_argument("--data-dir", help="where the run's store and models go (default: a temporary folder, "
                                           "removed afterwards)")
    parser.add_argument("--from-run", metavar="DATA_DIR", help="report the stages of the study `make study` ran "
                                                                "with this data directory (runs nothing)")
    parser.add_argument("--wall", type=float, help="with --from-run: the command's wall time in seconds")
    parser.add_argument("--load", default="-", help="with --from-run: the load average at the start and the end, "
                                                    "as you noted them (e.g. '0.3, 2.1')")
    parser.add_argument("--out", help="folder for the result files (default benchmarks/results)")
    args = parser.parse_args()

    from prismatic_assets.infra.config import load_config
    from prismatic_assets.pipeline.study import run_study
    from prismatic_assets.store.store import MetadataStore

    if args.from_run:
        if args.wall is None:
            parser.error("--from-run needs --wall: the seconds `make study` took, as you measured them")
        result = from_run(load_config(args.profile).replace(data_dir=str(Path(args.from_run).resolve())), args.wall,
                          args.load)
        write_results("study", result, markdown(result), directory=Path(args.out) if args.out else None)
        return 1 if result["failed"] else 0

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
        result = _result(config, report, report.seconds, total, load_start, [round(x, 2) for x in os.getloadavg()],
                         "tiny" if args.tiny else config.profile)
    write_results("study_tiny" if args.tiny else "study", result, markdown(result))
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
