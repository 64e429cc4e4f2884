"""The `prismatic` command line.

    prismatic score data.jsonl [--model PATH_OR_ID] [--fields prompt=question,response=solution]
    prismatic compare A B [C ...] [--json] [--html report.html]
    prismatic select DATA --k N [--method cluster-balanced|greedy|random] --out subset.jsonl
    prismatic demo [--profile local]
    prismatic experiment [--profile local]
    prismatic pipeline [--rounds 1] [--profile paper]
    prismatic rounds N [--profile local]
    prismatic config show [--profile paper] [--defaults] [--markdown]

`score` prints a data set's G-Vendi without Dagster; `demo` materializes the backbone and
the arm rounds through Dagster (the runs then show in `dagster dev`); `experiment` adds one
student per arm; `rounds` runs the LLM synthesis rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from prismatic_assets.interfaces.cli_toolkit import add_toolkit_commands

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _progress_bar(total_hint: str):
    from tqdm import tqdm

    bar = None

    def update(i: int, n: int, sample, outcome) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=n, desc=total_hint, unit="sample", file=sys.stderr)
        bar.update(1)
        if outcome.error:
            bar.write(f"  {sample.sample_id}: {outcome.error} (excluded from the score)")
        if i == n:
            bar.close()

    return update


def _cmd_score(args: argparse.Namespace) -> int:
    from prismatic_assets.interfaces.api import score_dataset

    q = float("inf") if args.q in ("inf", "Infinity") else float(args.q)
    result = score_dataset(
        args.data, fields=args.fields, limit=args.limit, model=args.model, device=args.device,
        params=args.params, autocast="bf16" if args.bf16 else None, max_length=args.max_length,
        projection=args.projection, dim=args.dim, seed=args.seed, q=q,
        cache=False if args.no_cache else True, progress=None if args.json else _progress_bar("gradients"),
        trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    width = 20
    rows = [
        ("G-Vendi", f"{result.g_vendi:.4f}" + (f"  (Renyi q={result.q:g})" if result.q != 1 else "")),
        ("N", f"{result.n} scored, {len(result.errors)} without a valid gradient, "
              f"{result.n_rejected} rejected rows"),
        ("d", str(result.dim)),
        ("model", f"{result.model}  [{result.model_fingerprint[:12]}]"),
        ("projection", result.projection),
        ("vectors", f"{result.n_computed} computed, {result.n_cached} from cache"),
        ("time", f"{result.seconds:.1f} s"),
    ]
    for name, value in rows:
        print(f"{name:<{width}}{value}")
    for sample_id, reason in list(result.errors.items())[:10]:
        print(f"  excluded {sample_id}: {reason}")
    for rejection in result.rejections[:10]:
        print(f"  rejected {rejection.source_ref}: {rejection.reason}")
    if result.n_rejected > 10:
        print(f"  ... {result.n_rejected - 10} more rejected rows (use --json for all)")
    return 0


def dagster_env(profile: str | None) -> dict[str, str]:
    """Environment for Dagster commands: this project's dagster.yaml as the instance config."""
    env = dict(os.environ)
    env.setdefault("DAGSTER_HOME", str(PROJECT_ROOT))
    if profile:
        env["PRISMATIC_PROFILE"] = profile
    return env


BACKBONE = "seed_samples,gradient_embeddings,gradient_clusters,g_vendi"


def _materialize(selection: str, env: dict[str, str], partition: str | None = None) -> tuple[int, float]:
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "--select", selection,
               "-m", "prismatic_assets.orchestration.definitions"] + (["--partition", partition] if partition else [])
    started = time.perf_counter()
    code = subprocess.call(command, env=env, cwd=PROJECT_ROOT)
    return code, time.perf_counter() - started


def _run_partitions(env: dict[str, str], asset: str, partitions: str, upcoming, count: int, label: str) -> int:
    """Add and materialize the next `count` partitions of a round asset, one run each, in order.

    upcoming(): the round to run next, read from the store before each run."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    with dg.DagsterInstance.get() as instance:
        for _ in range(count):
            partition = str(upcoming())
            if not instance.has_dynamic_partition(partitions, partition):
                instance.add_dynamic_partitions(partitions, [partition])
            print(f"[{label}] round {partition}", flush=True)
            code, seconds = _materialize(asset, env, partition=partition)
            if code != 0:
                print(f"[{label}] round {partition} failed after {seconds:.0f} s (exit {code}); what it computed is "
                      f"cached: run the same command again to resume", file=sys.stderr)
                return code
            print(f"[{label}] round {partition} done in {seconds:.0f} s", flush=True)
    return 0


def _run_rounds(settings, env: dict[str, str], count: int) -> int:
    """The next `count` synthesis rounds (LLM generator and teacher)."""
    from prismatic_assets.orchestration.assets.rounds import ROUNDS, next_round
    from prismatic_assets.store.store import MetadataStore

    store = MetadataStore(settings.store_path)
    return _run_partitions(env, "synthesis_round", ROUNDS.name, lambda: next_round(store), count, "rounds")


def _run_arm_rounds(settings, env: dict[str, str]) -> int:
    """Arm rounds up to `arms.rounds` (the ones already complete are kept)."""
    from prismatic_assets.orchestration.assets.arms import ARM_ROUNDS
    from prismatic_assets.pipeline.arms import next_arm_round
    from prismatic_assets.store.store import MetadataStore

    store = MetadataStore(settings.store_path)
    todo = max(0, settings.arms.rounds - next_arm_round(store, settings.arms.arms) + 1)
    return _run_partitions(env, "arm_round", ARM_ROUNDS.name, lambda: next_arm_round(store, settings.arms.arms),
                           todo, "arms")


def _cmd_rounds(args: argparse.Namespace) -> int:
    from prismatic_assets.infra.config import load_config

    settings = load_config(args.profile)
    code = _run_rounds(settings, dagster_env(args.profile), args.count)
    if code == 0:
        _print_summary(settings)
    return code


def _run_steps(label: str, profile: str | None, steps, summary) -> int:
    """Run `steps(settings, env, timings)` (Dagster materializations), then print the wall time
    per stage and `summary(settings)`."""
    from prismatic_assets.infra.config import load_config

    settings = load_config(profile)
    env = dagster_env(profile)
    os.makedirs(settings.data_path, exist_ok=True)
    print(f"[{label}] profile {settings.profile} (DAGSTER_HOME={env['DAGSTER_HOME']})", flush=True)
    timings: dict[str, float] = {}
    code = steps(settings, env, timings)
    if code != 0:
        print(f"[{label}] failed (exit {code}); see the log above", file=sys.stderr)
        return code
    print(f"[{label}] wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    summary(settings)
    return 0


def _timed(timings: dict[str, float], name: str, run) -> int:
    started = time.perf_counter()
    code = run()
    timings[name] = time.perf_counter() - started
    return code


def _cmd_demo(args: argparse.Namespace) -> int:
    """The backbone, the arm rounds, and with `experiment` one student per arm."""
    def steps(settings, env, timings) -> int:
        code = _timed(timings, "backbone", lambda: _materialize(BACKBONE, env)[0])
        code = code or _timed(timings, "arm rounds", lambda: _run_arm_rounds(settings, env))
        if args.experiment:
            code = code or _timed(timings, "students", lambda: _materialize("arm_students", env)[0])
        return code
    return _run_steps("demo", args.profile, steps, _print_arms_summary)


def _cmd_pipeline(args: argparse.Namespace) -> int:
    """The method's own lineage: backbone, LLM synthesis rounds, distillation, evaluation."""
    def steps(settings, env, timings) -> int:
        code = _timed(timings, "backbone", lambda: _materialize(BACKBONE, env)[0])
        if args.rounds:
            code = code or _timed(timings, "rounds", lambda: _run_rounds(settings, env, args.rounds))
        return code or _timed(timings, "distill+evaluation",
                              lambda: _materialize("distilled_model,student_evaluation", env)[0])
    return _run_steps("pipeline", args.profile, steps, _print_summary)


def _print_arms_summary(settings) -> None:
    from prismatic_assets.pipeline.arms import summary_lines
    from prismatic_assets.store.store import MetadataStore

    store = MetadataStore(settings.store_path)
    print(f"[demo] G-Vendi of each arm's pool after each round (gain over the round), accepted per round; "
          f"budget {settings.arms.budget} per arm:")
    for line in summary_lines(store, settings.arms.arms):
        print("  " + line)
    table = settings.data_path / "plots" / "arms-accuracy.md"
    if table.is_file():
        print("[demo] students, one per arm, on held-out tasks (n, accuracy, 95% Wilson interval):")
        for line in table.read_text().splitlines():
            print("  " + line)
    else:
        print("[demo] accuracies: not computed in this run (make experiment trains one student per arm)")
    print(f"[demo] metadata store: {settings.store_path}")
    print("[demo] Dagster UI: make ui, then http://127.0.0.1:3000 -> Assets -> arm_round (metadata: per_arm, "
          "g_vendi_per_arm chart) and arm_students")
    print(f"[demo] MLflow: mlflow ui --backend-store-uri sqlite:///{settings.data_path / 'mlflow.db'} "
          "-> experiment 'prismatic', runs arms-round-N (plots/) and arm-students")


def _print_summary(settings) -> None:
    from prismatic_assets.store.store import MetadataStore

    store = MetadataStore(settings.store_path)
    scores = store.query("SELECT scope, metric, q, value, n, dim, n_excluded, created_at FROM scores "
                         "ORDER BY created_at DESC LIMIT 5")
    print(f"[demo] metadata store: {settings.store_path}")
    print(scores)
    print("[demo] browse it in the UI: make ui  (then open http://127.0.0.1:3000)")


def _cmd_config(args: argparse.Namespace) -> int:
    from prismatic_assets.infra.config import defaults, defaults_markdown, describe, profile_path

    if args.defaults:
        if args.markdown:
            print(defaults_markdown(), end="")
        else:
            for key, value in defaults():
                print(f"{key:<48}{value!r}")
        return 0
    rows = describe(args.profile)
    print(f"# profile: {profile_path(args.profile)}")
    if args.markdown:
        print("| key | value | from |\n|---|---|---|")
        for key, value, origin in rows:
            print(f"| `{key}` | `{value!r}` | {origin} |")
        return 0
    width = max(len(k) for k, _, _ in rows) + 2
    for key, value, origin in rows:
        print(f"{key:<{width}}{value!r:<40} {origin}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from prismatic_assets.core.models import PACKAGED_MODEL

    parser = argparse.ArgumentParser(prog="prismatic", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    score = sub.add_parser("score", help="print the G-Vendi score of a data set",
                           description="Print G-Vendi (and N, d, model, projection) of a JSONL/Parquet "
                                       "file of prompt/response records, 'champ', or hf:owner/name[:split].")
    score.add_argument("data", help="a .jsonl/.json/.parquet file, 'champ', or hf:owner/name[:split]")
    score.add_argument("--model", default=PACKAGED_MODEL,
                       help=f"proxy model: folder, hub id, .gguf file or {PACKAGED_MODEL} (default)")
    score.add_argument("--fields", help="field mapping, e.g. prompt=question,response=solution,answer=final")
    score.add_argument("--limit", type=int, help="score only the first N valid rows")
    score.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    score.add_argument("--params", help="regex restricting the gradient to matching parameter names (faster)")
    score.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on GPUs; see benchmarks for CPUs)")
    score.add_argument("--max-length", type=int, default=2048, help="token budget per sample (default 2048)")
    score.add_argument("--projection", choices=["countsketch", "rademacher"], default="countsketch",
                       help="countsketch (fast on CPU, default) or rademacher (dense, the paper's GPU path)")
    score.add_argument("--dim", type=int, default=1024, help="projection dimension d (default 1024)")
    score.add_argument("--seed", type=int, default=0, help="projection seed (default 0)")
    score.add_argument("--q", default="1", help="Renyi order: 1 (Shannon, default), 2, inf, ...")
    score.add_argument("--no-cache", action="store_true", help="do not read or write the vector cache")
    score.add_argument("--trust-remote-code", action="store_true",
                       help="run Python code shipped with the model (off by default; read it first)")
    score.add_argument("--json", action="store_true", help="print a JSON report (no progress bar)")
    score.set_defaults(func=_cmd_score)

    demo = sub.add_parser("demo", help="the backbone, then the arm rounds (prismatic vs random vs naive), "
                                       "through Dagster")
    demo.add_argument("--profile", default=None, help="local (default) or paper, or a YAML path")
    demo.set_defaults(func=_cmd_demo, experiment=False)

    experiment = sub.add_parser("experiment", help="the demo, then one student per arm scored on held-out tasks")
    experiment.add_argument("--profile", default=None, help="local (default) or paper, or a YAML path")
    experiment.set_defaults(func=_cmd_demo, experiment=True)

    pipeline = sub.add_parser("pipeline", help="backbone, N LLM synthesis rounds, distillation and evaluation "
                                               "through Dagster (the paper's path)")
    pipeline.add_argument("--rounds", type=int, default=1, help="synthesis rounds after the backbone (default 1)")
    pipeline.add_argument("--profile", default=None, help="local (default) or paper, or a YAML path")
    pipeline.set_defaults(func=_cmd_pipeline)

    rounds = sub.add_parser("rounds", help="run the next N synthesis rounds (one Dagster run each)")
    rounds.add_argument("count", type=int, nargs="?", default=1, help="how many rounds (default 1)")
    rounds.add_argument("--profile", default=None, help="local (default) or paper, or a YAML path")
    rounds.set_defaults(func=_cmd_rounds)

    config = sub.add_parser("config", help="print the resolved configuration of a profile")
    config_sub = config.add_subparsers(dest="action", required=True)
    show = config_sub.add_parser("show", help="every setting, its value and where it comes from (file or default)")
    show.add_argument("--profile", default=None, help="local (default: $PRISMATIC_PROFILE or local), paper, "
                                                      "or a YAML path")
    show.add_argument("--defaults", action="store_true", help="the built-in defaults only, no profile")
    show.add_argument("--markdown", action="store_true", help="a Markdown table")
    show.set_defaults(func=_cmd_config)
    add_toolkit_commands(sub)
    from prismatic_assets.interfaces.cli_study import add_study_command
    add_study_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from prismatic_assets.store.store import StoreError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, ImportError, KeyError, StoreError) as exc:
        print(f"prismatic: error: {_describe_error(exc)}", file=sys.stderr)
        return 2


def _describe_error(exc: BaseException) -> str:
    """The error with its type and its chain of causes, so nothing of the reason is lost."""
    parts = [f"{type(exc).__name__}: {exc}"]
    seen = {id(exc)}
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        parts.append(f"caused by {type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
