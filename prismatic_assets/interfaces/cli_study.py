"""`prismatic study`: the correlation study on the command line.

    prismatic study [--profile local]

Materializes the `study` asset through Dagster (the run, its metadata and plots then show in
`dagster dev`), then prints each set's accuracy and measures and the rho table from the
store. A killed or failed run keeps every finished student: the same command resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _cmd_study(args: argparse.Namespace) -> int:
    from prismatic_assets.infra.config import load_config
    from prismatic_assets.interfaces.cli import _materialize, dagster_env
    from prismatic_assets.pipeline.study import (draw_labels, load_report, prepare, ranking_table, run_key, sets_table,
                                                 study_id)
    from prismatic_assets.store.store import MetadataStore

    settings = load_config(args.profile)
    # A pool too small for the sets is refused here, in seconds, before Dagster or any model starts.
    draw_labels(prepare(settings.study).pool, settings.study)
    os.makedirs(settings.data_path, exist_ok=True)
    env = dagster_env(args.profile)
    s = settings.study
    print(f"[study] profile {settings.profile}: {len(s.designs)} sets of {s.set_size} from pool {s.pool}, "
          f"{s.max_steps} SFT steps each; study {study_id(settings)}, run key {run_key(settings)}", flush=True)
    started = time.perf_counter()
    code, _ = _materialize("study", env)
    if code != 0:
        print(f"[study] failed (exit {code}) after {time.perf_counter() - started:.0f} s; every finished student is "
              "stored: run the same command again to resume", file=sys.stderr)
        return code
    report = load_report(MetadataStore(settings.store_path), settings)
    print(f"[study] wall time {time.perf_counter() - started:.0f} s")
    print("[study] sets: accuracy (correct/n, 95% Wilson interval) and diversity measures")
    print(sets_table(report))
    print("[study] Spearman rho over the sets, 95% bootstrap interval")
    print(ranking_table(report))
    if report.failed:
        print(f"[study] failed students (rerun to retry them): {report.failed}")
    print(f"[study] store: {settings.store_path} (tables study_*); figures: "
          f"{settings.data_path / 'study' / report.study_id / 'report'}")
    print("[study] Dagster UI: make ui -> Assets -> study (metadata, Plots tab); MLflow: runs study-* (one per "
          "student, nested under the study's run)")
    return 0


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
