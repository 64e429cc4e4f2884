"""`prismatic compare` and `prismatic select`: the data set toolkit on the command line.

    prismatic compare A B [C ...] [--json] [--html report.html]
    prismatic select DATA --k N [--method cluster-balanced|greedy|random] [--seed S] --out subset.jsonl

Both take the proxy and projection options of `prismatic score` (the projection seed is
`--projection-seed` here: `--seed` is the selection's or clustering's) and share its
vector cache, so vectors computed by one are reused by the others.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _q(text: str) -> float:
    return float("inf") if text.lower() in ("inf", "infinity") else float(text)


def _add_proxy_options(parser: argparse.ArgumentParser) -> None:
    from prismatic_assets.core.models import PACKAGED_MODEL

    parser.add_argument("--model", default=PACKAGED_MODEL,
                        help=f"proxy model: folder, hub id, .gguf file or {PACKAGED_MODEL} (default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument("--params", help="regex restricting the gradient to matching parameter names (faster)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on GPUs)")
    parser.add_argument("--max-length", type=int, default=2048, help="token budget per sample (default 2048)")
    parser.add_argument("--projection", choices=["countsketch", "rademacher"], default="countsketch",
                        help="countsketch (fast on CPU, default) or rademacher (dense, the paper's GPU path)")
    parser.add_argument("--dim", type=int, default=1024, help="projection dimension d (default 1024)")
    parser.add_argument("--projection-seed", type=int, default=0, help="projection seed (default 0)")
    parser.add_argument("--limit", type=int, help="read only the first N valid rows of each data set")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the vector cache")


def _proxy_kwargs(args: argparse.Namespace) -> dict:
    return dict(model=args.model, device=args.device, params=args.params, autocast="bf16" if args.bf16 else None,
                max_length=args.max_length, projection=args.projection, dim=args.dim,
                cache=False if args.no_cache else True)


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
        args.data, names=names, fields=fields, limit=args.limit, qs=[_q(q) for q in args.q.split(",")],
        clusters=args.clusters, cluster_seed=args.seed, examples=args.examples, batch_size=args.batch_size,
        seed=args.projection_seed, progress=None if quiet else _gradient_bar(),
        hidden_progress=None if quiet else _step_bar("hidden states", "sample"), **_proxy_kwargs(args))
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
        args.data, k=args.k, method=args.method, seed=args.seed, q=_q(args.q), clusters=args.clusters, out=args.out,
        fields=args.fields, limit=args.limit, projection_seed=args.projection_seed,
        progress=None if quiet else _gradient_bar(),
        step_progress=None if quiet else _step_bar(f"select ({args.method})", "pick"), **_proxy_kwargs(args))
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
    from prismatic_assets.core.selection import METHODS

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
    compare.add_argument("--q", default="1,2,inf", help="G-Vendi Renyi orders (default 1,2,inf)")
    compare.add_argument("--clusters", type=int, help="clusters of the union for coverage (default ~sqrt(N))")
    compare.add_argument("--seed", type=int, default=0, help="coverage clustering seed (default 0)")
    compare.add_argument("--examples", type=int, default=2, help="samples shown per distinguishing cluster")
    compare.add_argument("--batch-size", type=int, default=8, help="batch size of the hidden-state pass (default 8)")
    compare.add_argument("--json", action="store_true", help="print a JSON report (no progress bars)")
    compare.add_argument("--html", help="also write a self-contained HTML report with plots to this file")
    _add_proxy_options(compare)
    compare.set_defaults(func=_cmd_compare)

    select = sub.add_parser(
        "select", help="pick k samples that keep gradient diversity high",
        description="Pick k samples of a data set to maximize gradient diversity, write them (with why each was "
                    "picked) as JSON Lines, and print the subset's G-Vendi beside random subsets of the same size.")
    select.add_argument("data", help="a .jsonl/.json/.parquet file, 'champ', or hf:owner/name[:split]")
    select.add_argument("--k", type=int, required=True, help="how many samples to keep")
    select.add_argument("--method", choices=list(METHODS), default="greedy",
                        help="greedy (log-det, default), cluster-balanced (even across gradient clusters) or random")
    select.add_argument("--seed", type=int, default=0, help="selection seed (default 0)")
    select.add_argument("--out", required=True, help="where to write the subset (.jsonl)")
    select.add_argument("--clusters", type=int, help="clusters for cluster-balanced (default ~sqrt(k))")
    select.add_argument("--q", default="1", help="Renyi order of the reported G-Vendi (default 1)")
    select.add_argument("--fields", help="field mapping, e.g. prompt=question,response=solution")
    select.add_argument("--json", action="store_true", help="print a JSON report (no progress bars)")
    _add_proxy_options(select)
    select.set_defaults(func=_cmd_select)
