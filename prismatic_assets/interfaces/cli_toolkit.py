"""`prismatic compare` and `prismatic select`: the data set toolkit on the command line.

    prismatic compare A B [C ...] [--cluster-seed S] [--json] [--html report.html]
    prismatic select DATA --k N [--method cluster-balanced|greedy|random] [--selection-seed S] --out subset.jsonl

Both take the proxy and projection options of `prismatic score` (`add_proxy_options`,
`--projection-seed` among them) and share its vector cache, so vectors computed by one are
reused by the others. Every default is the config's (`infra/config.py`): the CLI, the API
and the Dagster assets compute the same vectors unless told otherwise. Each seed has its own
name: `--projection-seed`, `--cluster-seed` (compare's coverage clustering),
`--selection-seed` (select's method).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, get_args

from prismatic_assets.core.selection import DEFAULT_METHOD, DEFAULT_SEED, METHODS
from prismatic_assets.infra.config import (
    CompareConfig,
    ComputeConfig,
    ProjectionConfig,
    ProjectionKind,
    ProxyConfig,
    ScoreConfig,
)

PROXY, PROJECTION, COMPARE = ProxyConfig(), ProjectionConfig(), CompareConfig()


def parse_q(text: str) -> float:
    """A Renyi order from the command line: a number, or inf."""
    return float("inf") if text.lower() in ("inf", "infinity") else float(text)


def _q_text(q: float) -> str:
    return "inf" if math.isinf(q) else f"{q:g}"


def add_proxy_options(parser: argparse.ArgumentParser) -> None:
    """The proxy, projection and cache options shared by score, compare and select."""
    parser.add_argument("--model", default=PROXY.model,
                        help=f"proxy model: folder, hub id, .gguf file or packaged name (default {PROXY.model})")
    parser.add_argument("--device", default=PROXY.device, help=f"cpu, cuda, cuda:1, ... (default {PROXY.device})")
    parser.add_argument("--params", default=PROXY.params,
                        help="regex restricting the gradient to matching parameter names (faster)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on GPUs; see benchmarks for CPUs)")
    parser.add_argument("--max-length", type=int, default=PROXY.max_length,
                        help=f"token budget per sample (default {PROXY.max_length}, the profiles' proxy.max_length)")
    parser.add_argument("--projection", choices=list(get_args(ProjectionKind)),
                        default=PROJECTION.kind, help=f"countsketch (fast on CPU) or rademacher (dense, the paper's "
                                                      f"GPU path); default {PROJECTION.kind}")
    parser.add_argument("--dim", type=int, default=PROJECTION.dim,
                        help=f"projection dimension d (default {PROJECTION.dim})")
    parser.add_argument("--projection-seed", type=int, default=PROJECTION.seed,
                        help=f"projection seed (default {PROJECTION.seed})")
    parser.add_argument("--limit", type=int, help="read only the first N valid rows of each data set")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the vector cache")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run Python code shipped with the model (off by default; read it first)")


def proxy_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of the `api` functions that `add_proxy_options` collected."""
    return dict(model=args.model, device=args.device, params=args.params, autocast="bf16" if args.bf16 else None,
                max_length=args.max_length, projection=args.projection, dim=args.dim,
                projection_seed=args.projection_seed, cache=not args.no_cache,
                trust_remote_code=args.trust_remote_code)


def _step_bar(desc: str, unit: str):
    """A tqdm bar fed by (done, total) callbacks; a new bar starts whenever a new pass starts."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None or done < bar.n or total != bar.total:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _gradient_bar(desc: str = "gradients"):
    """Per-sample gradient progress (the `embed_samples` callback), one bar per data set, errors printed."""
    steps = _step_bar(desc, "sample")

    def update(i: int, n: int, sample, outcome) -> None:
        steps(i, n)
        if outcome.error:
            print(f"  {sample.sample_id}: {outcome.error} (excluded)", file=sys.stderr)

    return update


def _cmd_compare(args: argparse.Namespace) -> int:
    from prismatic_assets.interfaces.api import compare_datasets
    from prismatic_assets.reporting.compare_report import render_html, render_text

    if len(args.data) < 2:
        raise ValueError("compare needs at least two data sets: prismatic compare A B [C ...] "
                         "(`prismatic score A` scores one)")
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    fields = args.fields[0] if args.fields and len(args.fields) == 1 else args.fields
    quiet = args.json
    report = compare_datasets(
        args.data, names=names, fields=fields, limit=args.limit, qs=[parse_q(q) for q in args.q.split(",")],
        clusters=args.clusters, cluster_seed=args.cluster_seed, examples=args.examples, batch_size=args.batch_size,
        progress=None if quiet else _gradient_bar(),
        hidden_progress=None if quiet else _step_bar("hidden states", "sample"), **proxy_options(args))
    if args.html:
        path = Path(args.html)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(report), encoding="utf-8")
    if args.json:
        out = report.as_dict()
        if args.html:
            out["html"] = str(args.html)
        print(json.dumps(out, indent=2, allow_nan=False, default=str))
        return 0
    print(render_text(report))
    if args.html:
        print(f"HTML report: {args.html}")
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from prismatic_assets.interfaces.api import select_subset

    quiet = args.json
    report = select_subset(
        args.data, k=args.k, method=args.method, selection_seed=args.selection_seed, q=args.q, clusters=args.clusters,
        out=args.out, fields=args.fields, limit=args.limit, progress=None if quiet else _gradient_bar(),
        step_progress=None if quiet else _step_bar(f"select ({args.method})", "pick"), **proxy_options(args))
    if args.json:
        print(json.dumps({**report.as_dict(), "out": str(args.out)}, indent=2, default=str))
        return 0
    q = "inf" if math.isinf(report.q) else f"{report.q:g}"
    spread = f"{report.random_mean:.3f} ± {report.random_std:.3f} " \
             f"(min {min(report.random_g_vendi):.3f}, max {max(report.random_g_vendi):.3f})"
    width = 22
    rows = [
        ("selected", f"{report.k} of {report.n_candidates} samples, method {report.method}, seed {report.seed}"),
        (f"G-Vendi q={q}", f"{report.g_vendi:.3f}  the subset"),
        ("", f"{spread}  random subsets of {report.k}, {len(report.random_g_vendi)} seeds"),
        ("written", str(args.out)),
        ("model", f"{report.model}  [{report.model_fingerprint[:12]}]"),
        ("projection", report.projection),
        ("vectors", f"{report.n_computed} computed, {report.n_cached} from cache"),
        ("time", f"{report.seconds:.1f} s (selection {report.select_seconds:.2f} s)"),
    ]
    for name, value in rows:
        print(f"{name:<{width}}{value}")
    print("first picks:")
    for sample, why in report.picks[:5]:
        reason = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in why.items()
                           if k not in ("method", "note"))
        print(f"  {sample.source_ref}  ({reason})")
    for r in report.rejections[:10]:
        print(f"  rejected {r['ref']}: {r['reason']}")
    if report.n_rejected > 10:
        print(f"  ... {report.n_rejected - 10} more rejected rows (use --json for all)")
    for sid, reason in list(report.excluded.items())[:10]:
        print(f"  excluded {sid}: {reason}")
    for note in report.notes:
        print(f"note: {note}")
    return 0


def add_toolkit_commands(sub) -> None:
    """Add `compare` and `select` to the `prismatic` subcommands."""
    compare = sub.add_parser(
        "compare", help="compare data sets: G-Vendi, embedding Vendi, n-gram diversity, cluster coverage",
        description="Compare data sets under one proxy and projection: G-Vendi (q = 1, 2, inf), embedding Vendi, "
                    "distinct-1/2/3 and compression ratio, each with N; the share of each set per cluster of "
                    "their union's gradient vectors; examples from the clusters that tell them apart.")
    compare.add_argument("data", nargs="+", help="two or more .jsonl/.json/.parquet files, 'champ', or "
                                                 "hf:owner/name[:split]")
    compare.add_argument("--names", help="comma-separated labels, one per data set (default: file stems)")
    compare.add_argument("--fields", action="append",
                         help="field mapping for every set, or give it once per set in order "
                              "(e.g. prompt=question,response=solution)")
    qs = ",".join(_q_text(q) for q in COMPARE.qs)
    compare.add_argument("--q", default=qs, help=f"G-Vendi Renyi orders (default {qs})")
    compare.add_argument("--clusters", type=int, default=COMPARE.clusters,
                         help="clusters of the union for coverage (default ~sqrt(N))")
    compare.add_argument("--cluster-seed", type=int, default=COMPARE.cluster_seed,
                         help=f"coverage clustering seed (default {COMPARE.cluster_seed})")
    compare.add_argument("--examples", type=int, default=COMPARE.examples,
                         help=f"samples shown per distinguishing cluster (default {COMPARE.examples})")
    batch = ComputeConfig().batch_size
    compare.add_argument("--batch-size", type=int, default=batch,
                         help=f"batch size of the hidden-state pass (default {batch})")
    compare.add_argument("--json", action="store_true", help="print a JSON report (no progress bars)")
    compare.add_argument("--html", help="also write a self-contained HTML report with plots to this file")
    add_proxy_options(compare)
    compare.set_defaults(func=_cmd_compare)

    select = sub.add_parser(
        "select", help="pick k samples that keep gradient diversity high",
        description="Pick k samples of a data set to maximize gradient diversity, write them (with why each was "
                    "picked) as JSON Lines, and print the subset's G-Vendi beside random subsets of the same size.")
    select.add_argument("data", help="a .jsonl/.json/.parquet file, 'champ', or hf:owner/name[:split]")
    select.add_argument("--k", type=int, required=True, help="how many samples to keep")
    select.add_argument("--method", choices=list(METHODS), default=DEFAULT_METHOD,
                        help=f"greedy (log-det), cluster-balanced (even across gradient clusters) or random "
                             f"(default {DEFAULT_METHOD})")
    select.add_argument("--selection-seed", type=int, default=DEFAULT_SEED,
                        help=f"seed of the method and of the random subsets it is compared with "
                             f"(default {DEFAULT_SEED})")
    select.add_argument("--out", required=True, help="where to write the subset (.jsonl)")
    select.add_argument("--clusters", type=int, help="clusters for cluster-balanced (default ~sqrt(k))")
    q = ScoreConfig().q
    select.add_argument("--q", type=parse_q, default=q, help=f"Renyi order of the reported G-Vendi (default {q:g})")
    select.add_argument("--fields", help="field mapping, e.g. prompt=question,response=solution")
    select.add_argument("--json", action="store_true", help="print a JSON report (no progress bars)")
    add_proxy_options(select)
    select.set_defaults(func=_cmd_select)
