"""`prismatic study`: the correlation study on the command line.

    prismatic study [--profile local]

Materializes the `study` asset through Dagster (the run, its metadata and plots then show in
`dagster dev`), then prints each set's accuracy and measures and the rho table from the
store. A killed or failed run keeps every finished student: the same command resumes.
"""

from __future__ import annotations

import argparse


def _cmd_study(args: argparse.Namespace) -> int:
    from prismatic_assets.infra.config import load_config
    from prismatic_assets.interfaces.cli import _run_command
    from prismatic_assets.pipeline.study import draw_labels, prepare, run_key, study_id

    settings = load_config(args.profile)
    # A pool too small for the sets is refused here, in seconds, before Dagster or any model starts.
    draw_labels(prepare(settings.study).pool, settings.study)
    s = settings.study

    def steps(settings, session) -> int:
        label = (f"study {study_id(settings)}: {len(s.designs)} sets of {s.set_size} from pool {s.pool}, "
                 f"{s.max_steps} SFT steps each (run key {run_key(settings)})")
        code = session.job("study_job", label, "study")
        if code:
            session.console.say("[study] every finished student is stored: run the same command again to resume",
                                error=True)
        return code
    return _run_command("study", args.profile, steps, _print_study)


def _print_study(settings, say) -> None:
    from prismatic_assets.pipeline.study import load_report, ranking_table, sets_table
    from prismatic_assets.store.store import MetadataStore

    report = load_report(MetadataStore(settings.store_path), settings)
    if report is None:
        raise RuntimeError(f"{settings.store_path} holds no study for these settings: its sets were never drawn")
    say("Sets: accuracy (correct/n, 95% Wilson interval) and diversity measures")
    for line in sets_table(report).splitlines():
        say("  " + line)
    say("Spearman rho over the sets, 95% bootstrap interval")
    for line in ranking_table(report).splitlines():
        say("  " + line)
    if report.failed:
        say(f"Failed students (run the command again to retry them): {report.failed}")
    say(f"Store: {settings.store_path} (tables study_*); figures: "
        f"{settings.data_path / 'study' / report.study_id / 'report'}")
    say("Dagster UI: make ui, then Assets > study (metadata, Plots); MLflow: runs study-* (one per student, "
        "nested under the study's run)")


def add_study_command(sub) -> None:
    """Add `study` to the `prismatic` subcommands."""
    study = sub.add_parser(
        "study", help="does G-Vendi rank accuracy? train one student per designed training set, rank the measures",
        description="Draw training sets of equal size from one verified pool with diversity varied by design, train "
                    "one student per set, evaluate each in and out of distribution, and report Spearman rho of every "
                    "diversity measure against accuracy with a bootstrap interval (settings: the profile's `study` "
                    "block).")
    study.add_argument("--profile", default=None, help="local (default) or paper, or a YAML path")
    study.set_defaults(func=_cmd_study)
