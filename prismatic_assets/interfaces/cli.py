"""The `prismatic` command line.

    prismatic score data.jsonl [--model PATH_OR_ID] [--fields prompt=question,response=solution] [--projection-seed S]
    prismatic compare A B [C ...] [--json] [--html report.html]
    prismatic select DATA --k N [--method cluster-balanced|greedy|random] --out subset.jsonl
    prismatic demo [--profile local]
    prismatic experiment [--profile local]
    prismatic pipeline [--rounds 1] [--profile paper]
    prismatic rounds N [--profile local]
    prismatic config show [--profile paper] [--defaults] [--markdown]

`score` prints a data set's G-Vendi without Dagster; `demo` runs the code location's jobs
through the Dagster instance, as the UI does (backbone_job, then arm_round_job once per
round: the runs show in `make ui` under Overview and Jobs); `experiment` adds one student per
arm; `rounds` runs the LLM synthesis rounds. These print one line per step with its figure
and keep the full Dagster log in `<data_dir>/logs/` (interfaces/console.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from prismatic_assets.interfaces.cli_toolkit import add_proxy_options, add_toolkit_commands, parse_q, proxy_options

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Where `make ui` serves the Dagster UI.
UI_URL = "http://127.0.0.1:3000"


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

    result = score_dataset(args.data, fields=args.fields, limit=args.limit, q=args.q,
                           progress=None if args.json else _progress_bar("gradients"), **proxy_options(args))
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


def _use_profile(profile: str | None) -> str | None:
    """Point this process (and the code server and runs it starts) at the project's Dagster
    instance and at `profile`; returns the profile as the code location will read it."""
    if profile and Path(profile).is_file():
        profile = str(Path(profile).resolve())  # the working directory changes below
    os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT))
    if Path(os.environ["DAGSTER_HOME"]).resolve() == PROJECT_ROOT:
        os.chdir(PROJECT_ROOT)  # dagster.yaml's storage folders are relative to the project
    if profile:
        os.environ["PRISMATIC_PROFILE"] = profile
    return profile


def _run_command(label: str, profile: str | None, steps, summary) -> int:
    """Open the console and the code location, run `steps(settings, session)`, print `summary`.

    steps returns 0 or a failing exit code; every job it runs is one Dagster run of the
    code location (`session.job`), printed by the console (interfaces/console.py)."""
    from prismatic_assets.infra.config import load_config
    from prismatic_assets.interfaces.console import CommandConsole, format_seconds
    from prismatic_assets.interfaces.runs import open_launcher

    profile = _use_profile(profile)
    settings = load_config(profile)
    os.makedirs(settings.data_path, exist_ok=True)
    began = time.perf_counter()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill`, a CI timeout: stop the run as Ctrl-C does
    with CommandConsole(label, settings.data_path / "logs") as console:
        console.say(f"[{label}] profile {settings.profile}, data in {settings.data_path}; full log: "
                    f"{console.log_path}")
        try:
            with open_launcher(str(PROJECT_ROOT)) as launcher:
                session = _Session(console, launcher)
                code = steps(settings, session)
        except KeyboardInterrupt:
            console.say(f"[{label}] interrupted: the running step was asked to stop; what finished is kept. "
                        f"Full log: {console.log_path}", error=True)
            return 130
        except Exception as exc:  # a code location that does not load, a launch refused: one paragraph
            console.record(traceback.format_exc())
            console.say(f"[{label}] failed before its runs finished: {_describe_error(exc)}. Full log: "
                        f"{console.log_path}", error=True)
            return 1
        if code != 0:
            return code
        console.say(f"[{label}] done in {format_seconds(time.perf_counter() - began)}: " +
                    ", ".join(f"{k} {format_seconds(v)}" for k, v in session.timings.items()))
        summary(settings, console.say)
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


class _Session:
    """The runs of one command: each job launched and followed through the console, timed by label."""

    def __init__(self, console, launcher):
        self.console, self.launcher = console, launcher
        self.timings: dict[str, float] = {}

    def job(self, job: str, label: str, timing: str, partition: str | None = None) -> int:
        outcome = self.console.run(self.launcher, job, label, partition=partition)
        self.timings[timing] = self.timings.get(timing, 0.0) + outcome.seconds
        return 0 if outcome.success else 1

    def rounds(self, job: str, partitions: str, upcoming, count: int, timing: str) -> int:
        """The next `count` rounds of a partitioned round job, one run each, in order.

        upcoming(): the round to run next, read from the store before each run."""
        from prismatic_assets.orchestration.assets.rounds import CONCURRENCY_TAG

        for _ in range(count):
            busy = self.launcher.in_flight(CONCURRENCY_TAG)
            if busy:
                self.console.say(f"[{self.console.label}] a round is already running (Dagster run {busy[0][:8]}, "
                                 "started from the UI?): rounds run one at a time; wait for it, then run this "
                                 "command again", error=True)
                return 1
            partition = str(upcoming())
            instance = self.launcher.instance
            if not instance.has_dynamic_partition(partitions, partition):
                instance.add_dynamic_partitions(partitions, [partition])
            code = self.job(job, f"{timing[:-1]} {partition}", timing, partition=partition)
            if code:
                return code
        return 0


def _backbone(settings, session: _Session) -> int:
    return session.job("backbone_job", "backbone: seed samples, gradients, clusters, G-Vendi", "backbone")


def _arm_rounds(settings, session: _Session) -> int:
    """Arm rounds up to `arms.rounds` (the ones already complete are kept)."""
    from prismatic_assets.orchestration.assets.arms import ARM_ROUND_PARTITIONS
    from prismatic_assets.pipeline.arms import next_arm_round
    from prismatic_assets.store.store import MetadataStore

    store = MetadataStore(settings.store_path)
    todo = max(0, settings.arms.rounds - next_arm_round(store, settings.arms.arms) + 1)
    return session.rounds("arm_round_job", ARM_ROUND_PARTITIONS, lambda: next_arm_round(store, settings.arms.arms),
                          todo, "arm rounds")


def _synthesis_rounds(settings, session: _Session, count: int) -> int:
    """The next `count` synthesis rounds (LLM generator and teacher)."""
    from prismatic_assets.orchestration.assets.rounds import ROUND_PARTITIONS, next_round
    from prismatic_assets.store.store import MetadataStore

    store = MetadataStore(settings.store_path)
    return session.rounds("synthesis_round_job", ROUND_PARTITIONS, lambda: next_round(store), count, "rounds")


def _cmd_rounds(args: argparse.Namespace) -> int:
    return _run_command("rounds", args.profile, lambda settings, session: _synthesis_rounds(settings, session,
                                                                                          args.count), _print_summary)


def _cmd_demo(args: argparse.Namespace) -> int:
    """The backbone, the arm rounds, and with `experiment` one student per arm."""
    def steps(settings, session: _Session) -> int:
        code = _backbone(settings, session) or _arm_rounds(settings, session)
        if args.experiment:
            code = code or session.job("arm_students_job", "students: one per arm, scored on held-out tasks",
                                       "students")
        return code
    return _run_command("experiment" if args.experiment else "demo", args.profile, steps, _print_arms_summary)


def _cmd_pipeline(args: argparse.Namespace) -> int:
    """The method's own lineage: backbone, LLM synthesis rounds, distillation, evaluation."""
    def steps(settings, session: _Session) -> int:
        code = _backbone(settings, session)
        if args.rounds:
            code = code or _synthesis_rounds(settings, session, args.rounds)
        return code or session.job("distillation_job", "distillation and evaluation", "distill+evaluation")
    return _run_command("pipeline", args.profile, steps, _print_summary)


def _print_arms_summary(settings, say) -> None:
    from prismatic_assets.pipeline.arms import summary_lines
    from prismatic_assets.store.store import MetadataStore

    store = MetadataStore(settings.store_path)
    say(f"Per round and arm: accepted (shortfall) of budget {settings.arms.budget}, candidates that passed the "
        "sparse-cluster filter, G-Vendi and (family, level) coverage of the arm's pool:")
    for line in summary_lines(store, settings.arms.arms):
        say("  " + line)
    table = settings.data_path / "plots" / "arms-accuracy.md"
    if table.is_file():
        say("Students, one per arm, on held-out tasks (n, accuracy, 95% Wilson interval):")
        for line in table.read_text().splitlines():
            say("  " + line)
    else:
        say("Accuracies: not computed in this run (make experiment trains one student per arm).")
    say(f"Metadata store: {settings.store_path}")
    say(f"Dagster UI: make ui, then {UI_URL} (Assets > arm_round: per_arm, charts; Plots: g_vendi/<arm>, "
        "cells/<arm>, cell_entropy/<arm>; arm_students)")
    say(f"MLflow: mlflow ui --backend-store-uri sqlite:///{settings.data_path / 'mlflow.db'} "
        "(experiment 'prismatic': arms-round-N with plots/, arm-students)")


def _print_summary(settings, say) -> None:
    from prismatic_assets.store.store import MetadataStore

    store = MetadataStore(settings.store_path)
    scores = store.recent_scores(5).drop("created_at")
    scores = scores.with_columns(scores["value"].round(3))
    say(f"Metadata store: {settings.store_path}; its latest scores:")
    for line in str(scores).splitlines():
        say("  " + line)
    say(f"Dagster UI: make ui, then {UI_URL}")


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
    from prismatic_assets.infra.config import ScoreConfig

    parser = argparse.ArgumentParser(prog="prismatic", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    score = sub.add_parser("score", help="print the G-Vendi score of a data set",
                           description="Print G-Vendi (and N, d, model, projection) of a JSONL/Parquet "
                                       "file of prompt/response records, 'champ', or hf:owner/name[:split].")
    score.add_argument("data", help="a .jsonl/.json/.parquet file, 'champ', or hf:owner/name[:split]")
    score.add_argument("--fields", help="field mapping, e.g. prompt=question,response=solution,answer=final")
    q = ScoreConfig().q
    score.add_argument("--q", type=parse_q, default=q, help=f"Renyi order: 1 (Shannon), 2, inf, ... (default {q:g})")
    score.add_argument("--json", action="store_true", help="print a JSON report (no progress bar)")
    add_proxy_options(score)
    score.set_defaults(func=_cmd_score)

    demo = sub.add_parser("demo", help="the backbone, then the arm rounds (prismatic, prismatic_targeted, random, "
                                       "naive), through Dagster")
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
