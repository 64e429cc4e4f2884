"""Render a `ComparisonReport`: a terminal table, PNG plots, one self-contained HTML file.

The HTML embeds its plots as base64 PNGs and its style inline, so it can be mailed or
attached to an issue as one file. Nothing here computes a metric.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Sequence

from prismatic_assets.pipeline.compare import ComparisonReport
from prismatic_assets.reporting.plots import _png, pyplot  # Agg backend (imported on first use), figure-to-PNG

_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]


def _q_label(q: float) -> str:
    return "inf" if math.isinf(q) else f"{q:g}"


def metric_rows(report: ComparisonReport) -> list[tuple[str, list[str]]]:
    """(label, one cell per set) rows shared by the terminal table and the HTML table."""
    rows: list[tuple[str, list[str]]] = []
    rows.append(("source", [s.source for s in report.sets]))
    rows.append(("samples (loaded / rejected)", [f"{s.n_loaded} / {s.n_rejected}" for s in report.sets]))
    for q in report.qs:
        rows.append((f"G-Vendi q={_q_label(q)}", [f"{s.g_vendi[q]:.3f} (N={s.n_vectors})" for s in report.sets]))
    labels = {"embedding_vendi": "embedding Vendi", "distinct_1": "distinct-1", "distinct_2": "distinct-2",
              "distinct_3": "distinct-3", "compression_ratio": "compression ratio (lower = more diverse)"}
    for metric, label in labels.items():
        cells = []
        for s in report.sets:
            m = s.metric(metric)
            cells.append("-" if m is None or math.isnan(m.value) else f"{m.value:.3f} (N={m.n})")
        rows.append((label, cells))
    k = report.coverage.k
    rows.append((f"coverage entropy over {k} shared clusters",
                 [f"{report.coverage.entropy[s.name]:.3f} (= {report.coverage.effective_clusters(s.name):.1f} "
                  f"clusters)" for s in report.sets]))
    rows.append(("clusters only this set fills",
                 [str(len(report.coverage.exclusive.get(s.name, []))) for s in report.sets]))
    return rows


def render_text(report: ComparisonReport, width: int = 30) -> str:
    """The terminal report: metrics per set, the coverage table, examples."""
    names = [s.name for s in report.sets]
    rows = metric_rows(report)
    col = max([len(n) for n in names] + [len(c) for _, cells in rows for c in cells] + [12]) + 2
    lines = [f"{'':<{width + 12}}" + "".join(f"{n:<{col}}" for n in names)]
    for label, cells in rows:
        lines.append(f"{label:<{width + 12}}" + "".join(f"{c:<{col}}" for c in cells))
    lines.append("")
    lines.append(f"model {report.model} [{report.model_fingerprint[:12]}], projection {report.projection}")
    cov = report.coverage
    lines.append("")
    lines.append(f"Share of each set per cluster ({cov.k} clusters of the union, k-means seed {report.cluster_seed}; "
                 "sorted by contrast):")
    lines.append("cluster  size  " + "".join(f"{n[:12]:>14}" for n in names) + "   only in")
    order = sorted(range(cov.k), key=lambda c: (-cov.contrast[c], -cov.sizes[c], c))
    for c in order:
        if cov.sizes[c] == 0:
            continue
        only = [n for n in names if c in cov.exclusive.get(n, [])]
        lines.append(f"{c:>7}  {cov.sizes[c]:>4}  " + "".join(f"{cov.shares[i, c]:>14.1%}" for i in range(len(names)))
                     + (f"   {only[0]}" if only else ""))
    if report.examples:
        lines.append("")
        lines.append("Clusters that tell the sets apart most, with samples nearest their centre:")
        for e in report.examples:
            shares = ", ".join(f"{n} {v:.0%}" for n, v in e.shares.items())
            lines.append(f"  cluster {e.cluster} (mostly {e.set_name}; share of each set: {shares})")
            for sample in e.samples:
                lines.append(f"    [{sample['source_ref']}] {sample['prompt'][:150]}")
    for s in report.sets:
        for r in s.rejections[:5]:
            lines.append(f"  rejected {r['ref']}: {r['reason']}")
        if s.n_rejected > 5:
            lines.append(f"  ... {s.n_rejected - 5} more rejected rows in {s.name} (use --json for the first 20)")
        for sid, reason in list(s.excluded.items())[:5]:
            lines.append(f"  excluded {sid}: {reason}")
    for note in report.notes:
        lines.append(f"note: {note}")
    lines.append(f"time {report.seconds:.1f} s")
    return "\n".join(line.rstrip() for line in lines)


# -- plots -------------------------------------------------------------------------------
def share_bars_png(report: ComparisonReport, max_clusters: int = 30) -> bytes:
    """Grouped bars: each set's share of its samples per cluster, clusters by decreasing contrast."""
    cov = report.coverage
    names = [s.name for s in report.sets]
    order = [c for c in sorted(range(cov.k), key=lambda c: (-cov.contrast[c], -cov.sizes[c], c))
             if cov.sizes[c] > 0][:max_clusters]
    width = 0.8 / len(names)
    fig, ax = pyplot().subplots(figsize=(max(6.0, 0.35 * len(order) * max(1, len(names)) / 2 + 2), 3.4))
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(order))]
        ax.bar(xs, [cov.shares[i, c] for c in order], width=width, label=name, color=_COLORS[i % len(_COLORS)])
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([str(c) for c in order], fontsize=8)
    ax.set_xlabel("gradient cluster (most telling first)")
    ax.set_ylabel("share of the set's samples")
    ax.set_title(f"Cluster shares ({cov.k} clusters of the union)")
    ax.legend(fontsize=8)
    return _png(fig)


def map_png(report: ComparisonReport) -> bytes:
    """Scatter of the gradient vectors on their two leading principal axes, one colour per set."""
    fig, ax = pyplot().subplots(figsize=(5.2, 4.2))
    for i, s in enumerate(report.sets):
        pts = report.map_xy[report.map_set == i]
        ax.scatter(pts[:, 0], pts[:, 1], s=14, alpha=0.7, label=f"{s.name} ({len(pts)})",
                   color=_COLORS[i % len(_COLORS)], edgecolors="none")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("Gradient vectors, 2-D PCA map")
    ax.legend(fontsize=8)
    return _png(fig)


def metrics_png(report: ComparisonReport) -> bytes:
    """Each metric relative to the first set (1.0 = same as it), G-Vendi and embedding Vendi first."""
    labels, values = [], []
    first = report.sets[0]
    for q in report.qs:
        labels.append(f"G-Vendi q={_q_label(q)}")
        values.append([s.g_vendi[q] / first.g_vendi[q] for s in report.sets])
    for metric in ("embedding_vendi", "distinct_1", "distinct_2", "distinct_3", "compression_ratio"):
        base = first.metric(metric)
        if base is None or math.isnan(base.value) or base.value == 0:
            continue
        labels.append(metric.replace("_", "-").replace("embedding-vendi", "embedding Vendi"))
        values.append([(m.value if (m := s.metric(metric)) else float("nan")) / base.value
                       for s in report.sets])
    fig, ax = pyplot().subplots(figsize=(6.4, 3.2))
    width = 0.8 / len(report.sets)
    for i, s in enumerate(report.sets):
        xs = [j + (i - (len(report.sets) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [v[i] for v in values], width=width, label=s.name, color=_COLORS[i % len(_COLORS)])
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"relative to {first.name}")
    ax.set_title("Metrics relative to the first set")
    ax.legend(fontsize=8)
    return _png(fig)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str | int]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: ComparisonReport, title: str = "Data set comparison") -> str:
    """One self-contained HTML page: metrics, plots, coverage table, examples."""
    names = [s.name for s in report.sets]
    cov = report.coverage
    metrics = _table(["metric"] + names, [[label] + cells for label, cells in metric_rows(report)])
    order = [c for c in sorted(range(cov.k), key=lambda c: (-cov.contrast[c], -cov.sizes[c], c)) if cov.sizes[c] > 0]
    coverage = _table(["cluster", "size"] + [f"share of {n}" for n in names] + ["only in"],
                      [[c, int(cov.sizes[c])] + [f"{cov.shares[i, c]:.1%}" for i in range(len(names))]
                       + [", ".join(n for n in names if c in cov.exclusive.get(n, []))] for c in order])
    plots = [_img(metrics_png(report), "metrics relative to the first set")] if len(names) > 1 else []
    plots += [_img(share_bars_png(report), "cluster shares"), _img(map_png(report), "2-D map")]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
        "th{background:#f3f3f3}img{max-width:100%;margin:0.5em 1em 0.5em 0}"
        ".sample{border-left:3px solid #999;padding:4px 10px;margin:6px 0;font-size:14px}"
        ".muted{color:#666;font-size:13px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='muted'>Proxy {html.escape(report.model)} [{report.model_fingerprint[:12]}], projection "
        f"{html.escape(report.projection)}, d = {report.dim}; coverage: {cov.k} clusters of the union "
        f"(spherical k-means, seed {report.cluster_seed}); {report.seconds:.1f} s.</p>",
        "<h2>Metrics</h2>", metrics,
        "<p class='muted'>G-Vendi: exp(entropy) of the eigenvalues of the gradients' second moment. Embedding Vendi: "
        "the same on mean-pooled last hidden states of the proxy. distinct-n: distinct n-grams / all n-grams. "
        "Compression ratio: text bytes / gzip bytes (higher = more repetitive). Coverage entropy: each set's "
        "entropy over the shared clusters.</p>",
        "<h2>Plots</h2>", "".join(plots),
        "<h2>Coverage</h2>", coverage,
    ]
    if report.examples:
        parts.append("<h2>Clusters that tell the sets apart most</h2>")
        for e in report.examples:
            shares = ", ".join(f"{html.escape(n)} {v:.0%}" for n, v in e.shares.items())
            parts.append(f"<h3>Cluster {e.cluster}: mostly {html.escape(e.set_name)}</h3>"
                         f"<p class='muted'>share of each set's samples: {shares}</p>")
            for s in e.samples:
                parts.append(f"<div class='sample'><b>{html.escape(s['source_ref'])}</b> "
                             f"<span class='muted'>(cosine to centre {s['similarity']:.2f})</span><br>"
                             f"<b>prompt:</b> {html.escape(s['prompt'])}<br>"
                             f"<b>response:</b> {html.escape(s['response'])}</div>")
    rejected = [(s.name, r) for s in report.sets for r in s.rejections]
    if rejected:
        parts.append("<h2>Rejected rows</h2>")
        parts.append(_table(["set", "row", "reason"], [[n, r["ref"], r["reason"]] for n, r in rejected]))
    for note in report.notes:
        parts.append(f"<p class='muted'>Note: {html.escape(note)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
