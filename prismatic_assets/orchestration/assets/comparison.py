"""The `dataset_comparison` asset: the seed pool beside the data sets named in the profile.

It runs `pipeline.compare.compare_sets` with the proxy and projection of the backbone, so
the seed pool's gradient vectors come from the store (no recomputation) and the other
sets' vectors are cached there too. Every set's metrics are stored as `scores` rows of
scope "compare:<name>", the self-contained HTML report is written next to the store
(`<data_dir>/reports/dataset_comparison.html`), and the plots show on the asset's page.

Settings: the profile's `compare` section (`CompareConfig`), each overridable per run in
the launchpad. With no data sets listed, the seed pool is reported alone (its metrics and
cluster spread), with a note saying how to add sets.
"""

import os
import tempfile
from pathlib import Path
from typing import Optional

import dagster as dg

from prismatic_assets.infra.config import CompareConfig
from pydantic import Field

from prismatic_assets.reporting import plots
from prismatic_assets.reporting.compare_report import map_png, metric_rows, render_html, share_bars_png
from prismatic_assets.orchestration.resources import ProfileResource, ProxyResource, StoreResource
from prismatic_assets.pipeline.compare import compare_sets, store_comparison
from prismatic_assets.pipeline.datasets import LoadedSet, load_sets
from prismatic_assets.pipeline.seed import load_seed

GROUP = "analysis"
SEED_SET = "seed"


class CompareRunConfig(dg.Config):
    """Per-run overrides of the profile's `compare` section (unset: the profile's value)."""

    datasets: Optional[list[str]] = Field(None, description="data sets to put beside the seed pool")
    names: Optional[list[str]] = None
    fields: Optional[str] = None
    limit: Optional[int] = None
    include_seed: Optional[bool] = None
    clusters: Optional[int] = None
    cluster_seed: Optional[int] = None


def compare_settings(profile: ProfileResource, run: CompareRunConfig) -> CompareConfig:
    """The profile's `compare` section with the run's overrides applied."""
    base = profile.config().compare
    changes = {k: v for k, v in run.model_dump().items() if v is not None}
    return CompareConfig(**{**base.model_dump(), **changes})


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


@dg.asset(group_name=GROUP, kinds={"python", "duckdb"}, deps=[dg.AssetKey("gradient_embeddings")],
          description="The seed pool beside the data sets of the profile's `compare` section: G-Vendi (q = 1, 2, "
                      "inf), embedding Vendi, distinct-n, compression ratio, and each set's share of the clusters "
                      "of their union; an HTML report with plots.")
def dataset_comparison(context: dg.AssetExecutionContext, config: CompareRunConfig, profile: ProfileResource,
                       proxy: ProxyResource, store: StoreResource) -> dg.MaterializeResult:
    settings = compare_settings(profile, config)
    if not settings.datasets and not settings.include_seed:
        raise dg.Failure("nothing to compare: list data sets under `compare.datasets` in the profile, or set "
                         "`compare.include_seed: true` to report the seed pool")
    if settings.names and len(settings.names) != len(settings.datasets):
        raise dg.Failure(f"compare.names has {len(settings.names)} entries for {len(settings.datasets)} "
                         "data sets: give one name per data set, or none")
    sets = []
    if settings.include_seed:
        seed_config = profile.config().seed
        seed = load_seed(seed_config, profile.config().world)
        sets.append(LoadedSet(SEED_SET, f"seed pool ({seed_config.source})", list(seed.pool),
                              list(seed.result.rejections)))
    if settings.datasets:
        sets += load_sets(settings.datasets, names=settings.names or None, fields=settings.fields,
                          limit=settings.limit)
    notes = []
    if len(sets) == 1:
        notes.append("no data sets listed under compare.datasets: the seed pool is reported alone; add files "
                     "there to compare them with it")
    db = store.open()
    log_every = max(1, sum(len(s.samples) for s in sets) // 20)

    def progress(i: int, n: int, sample, outcome) -> None:
        if i % log_every == 0 or i == n or outcome.error:
            note = f" ({sample.sample_id}: {outcome.error})" if outcome.error else ""
            context.log.info(f"gradients {i}/{n}{note}")

    with proxy.open() as embedder:
        report = compare_sets(sets, embedder, db, clusters=settings.clusters, cluster_seed=settings.cluster_seed,
                              examples=settings.examples, model=profile.config().proxy.model, run_id=context.run_id,
                              gradient_progress=progress, on_stage=context.log.info)
    report.notes.extend(notes)
    n_rows = store_comparison(db, report, sets, run_id=context.run_id)
    html_path = Path(db.path).parent / "reports" / "dataset_comparison.html"
    _write_atomic(html_path, render_html(report, title="Data set comparison (dataset_comparison asset)"))
    names = [s.name for s in report.sets]
    table = "| metric | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    table += "\n".join(f"| {label} | " + " | ".join(cells) + " |" for label, cells in metric_rows(report))
    for note in report.notes:
        context.log.info(note)
    return dg.MaterializeResult(metadata={
        "sets": dg.MetadataValue.json(names),
        "metrics": dg.MetadataValue.md(table),
        "g_vendi": dg.MetadataValue.json({s.name: s.g_vendi[1.0] for s in report.sets}),
        "coverage_k": report.coverage.k,
        "exclusive_clusters": dg.MetadataValue.json({n: len(c) for n, c in report.coverage.exclusive.items()}),
        "cluster_shares": dg.MetadataValue.md(plots.markdown_image(share_bars_png(report), "cluster shares")),
        "gradient_map": dg.MetadataValue.md(plots.markdown_image(map_png(report), "2-D map")),
        "html_report": dg.MetadataValue.path(str(html_path)),
        "scores_rows": n_rows,
        "notes": dg.MetadataValue.json(report.notes),
    })
