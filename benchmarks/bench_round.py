"""Wall time of one synthesis round, stage by stage, on a profile's real models.

    python -m benchmarks.bench_round --store data/prismatic.duckdb [--profile local]

The round runs on a copy of `--store` (which must hold the materialized backbone: the
seed pool and its gradient vectors, e.g. after `make demo` or a backbone materialize), so
the user's store is not touched. The copy's generation cache is emptied first, so every
problem and solution is generated afresh (a cold round); pool vectors come from the
store's cache, as in a real round. The generator engine is started before the clock so its
start-up time is reported on its own line.

Writes benchmarks/results/round.json and round.md (or into `--out`).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_results
from prismatic_assets.infra.config import build_config, load_config
from prismatic_assets.infra.engines import EngineSet, open_engine
from prismatic_assets.orchestration.assets.rounds import next_round
from prismatic_assets.pipeline.embedder import build_embedder
from prismatic_assets.pipeline.round import STAGES, lend, run_round
from prismatic_assets.store import schema as S
from prismatic_assets.store.store import MetadataStore


def _engine_start(generator) -> float:
    """Start the engine now (vLLM starts lazily on the first call); seconds taken."""
    began = time.perf_counter()
    if hasattr(generator, "llm"):
        generator.llm  # noqa: B018 - the property starts the engine
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="a DuckDB store with the backbone materialized")
    parser.add_argument("--profile", default=None, help="local (default) or paper, or a YAML path")
    parser.add_argument("--requests", type=int, help="override requests_per_round")
    parser.add_argument("--out", help="where to write round.json / round.md (default benchmarks/results)")
    args = parser.parse_args(argv)

    settings = load_config(args.profile)
    source = Path(args.store)
    if not source.is_file():
        raise SystemExit(f"{source}: no such store; materialize the backbone first (make demo, or "
                         f"dagster asset materialize --select seed_samples,gradient_embeddings,...)")
    if args.requests:
        values = settings.model_dump()
        values["synthesis"]["requests_per_round"] = args.requests
        settings = build_config(values)
    rs = settings.synthesis
    with tempfile.TemporaryDirectory(prefix="bench-round-") as tmp:
        copy = Path(tmp) / "store.duckdb"
        shutil.copyfile(source, copy)
        store = MetadataStore(copy)
        with store.connect() as con:
            con.execute(f"DELETE FROM {S.GENERATIONS}")
        pool = store.query(f"SELECT count(*) AS n FROM {S.SAMPLES} WHERE split = 'pool'")["n"][0]
        if not pool:
            raise SystemExit(f"{source}: no pool samples; materialize the backbone first")
        round_number = next_round(store)
        holdout = store.query(f"SELECT prompt FROM {S.SAMPLES} WHERE split = 'holdout'")["prompt"].to_list()
        embedder = build_embedder(settings.proxy, settings.projection)
        generator = open_engine(settings.synthesis.generator)
        teacher = (generator if settings.synthesis.teacher == settings.synthesis.generator
                   else open_engine(settings.synthesis.teacher))
        try:
            start = _engine_start(generator) + (_engine_start(teacher) if teacher is not generator else 0.0)
            began = time.perf_counter()
            # Engines started above (timed apart) and lent to the round.
            report = run_round(store, round_number, engines=EngineSet.of(generator=generator, teacher=teacher),
                               proxy=lend(embedder), config=settings,
                               eval_texts={"seed_holdout": holdout} if holdout else {},
                               progress=lambda stage, done, total: print(f"  {stage} {done}/{total}", flush=True))
            total = time.perf_counter() - began
        finally:
            generator.close()
            if teacher is not generator:
                teacher.close()
        tokens = generator.total_completion_tokens
        if teacher is not generator:
            tokens += teacher.total_completion_tokens

    seconds = {stage: report.seconds.get(stage, 0.0) for stage in STAGES}
    rows = [f"| engine start (once per step) | {start:.1f} | |"]
    rows += [f"| {stage} | {s:.1f} | {100 * s / total:.0f}% |" for stage, s in seconds.items()]
    rows.append(f"| **round total** | **{total:.1f}** | 100% |")
    llm_seconds = seconds["generate"] + seconds["solve"]
    funnel = (f"requests {report.requests}, parsed {report.problems_parsed}, duplicates {report.duplicates}, "
              f"contaminated {report.contaminated}, sent to teacher {report.sent_to_teacher}, verified "
              f"{report.verified}, accepted {report.accepted}; pool {report.n_pool}, K={report.k} "
              f"({report.n_sparse} sparse); G-Vendi before {report.g_vendi_before:.3f}, after "
              f"{report.g_vendi_after:.3f}, random control {report.g_vendi_random:.3f}")
    markdown = "\n".join([
        f"### One synthesis round by stage ({settings.profile} profile, round {round_number}, cold cache)",
        "",
        f"Generator {settings.synthesis.generator.backend}:{settings.synthesis.generator.model}, teacher "
        f"{settings.synthesis.teacher.backend}:{settings.synthesis.teacher.model}, "
        f"{rs.requests_per_round} requests x {rs.new_per_request} problems, {rs.n_solutions} solutions each.",
        "",
        "| stage | seconds | share |",
        "|---|---|---|",
        *rows,
        "",
        f"Funnel: {funnel}.",
        "",
        f"LLM: {tokens} completion tokens in {llm_seconds:.1f} s of generate + solve "
        f"({tokens / llm_seconds if llm_seconds else 0:.1f} tokens/s).",
    ])
    write_results("round", {"profile": settings.profile, "round": round_number, "engine_start_s": start,
                            "total_s": total, "seconds": seconds, "report": report.as_dict(),
                            "completion_tokens": tokens},
                  markdown, directory=args.out)


if __name__ == "__main__":
    main()
