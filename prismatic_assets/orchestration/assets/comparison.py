"""The `dataset_comparison` asset: the seed pool beside the data sets named in the profile.

It runs `pipeline.dataset_comparison.compare_with_seed` with the proxy and projection of the
backbone, so the seed pool's gradient vectors come from the store (no recomputation) and the
other sets' vectors are cached there too. Every set's metrics are stored as `scores` rows of
scope "compare:<name>", the self-contained HTML report is written next to the store
(`<data_dir>/reports/dataset_comparison.html`), and the plots show on the asset's page.

Settings: the profile's `compare` section (`CompareConfig`), each overridable per run in
the launchpad. With no data sets listed, the seed pool is reported alone (its metrics and
cluster spread), with a note saying how to add sets.
"""

from typing import Optional

import dagster as dg
from pydantic import Field

from prismatic_assets.infra.config import with_overrides
from prismatic_assets.orchestration.metadata import chart, figure, rounded
from prismatic_assets.orchestration.progress import StepProgress
from prismatic_assets.orchestration.resources import ProfileResource, ProxyResource, StoreResource
from prismatic_assets.pipeline.dataset_comparison import compare_with_seed, comparison_sets
from prismatic_assets.reporting.compare_report import map_png, share_bars_png

GROUP = "analysis"


class CompareRunConfig(dg.Config):
    """Per-run overrides of the profile's `compare` section (unset: the profile's value)."""

    datasets: Optional[list[str]] = Field(None, description="data sets to put beside the seed pool")
    names: Optional[list[str]] = None
    fields: Optional[str] = None
    limit: Optional[int] = None
    include_seed: Optional[bool] = None
    clusters: Optional[int] = None
    cluster_seed: Optional[int] = None


@dg.asset(group_name=GROUP, kinds={"python", "duckdb"}, deps=[dg.AssetKey("gradient_embeddings")],
          description="The seed pool beside the data sets of the profile's `compare` section: G-Vendi (q = 1, 2, "
                      "inf), embedding Vendi, distinct-n, compression ratio, and each set's share of the clusters "
                      "of their union; an HTML report with plots.")
def dataset_comparison(context: dg.AssetExecutionContext, config: CompareRunConfig, profile: ProfileResource,
                       proxy: ProxyResource, store: StoreResource) -> dg.MaterializeResult:
    profile_config = profile.config()
    settings = with_overrides(profile_config.compare, config.model_dump())
    try:
        # Before the proxy loads: a typo costs nothing.
        chosen = comparison_sets(settings, profile_config.seed, profile_config.world)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    with proxy.open() as embedder:
        done = compare_with_seed(store.open(), embedder, chosen, settings, model=profile_config.proxy.model,
                                 run_id=context.run_id, log=context.log.info,
                                 on_progress=StepProgress(context.log.info))
    report = done.report
    return dg.MaterializeResult(metadata={
        "sets": dg.MetadataValue.json(done.set_names()),
        "metrics": dg.MetadataValue.md(done.metric_table()),
        "g_vendi": dg.MetadataValue.json(rounded(done.g_vendi(), 3)),
        **{f"g_vendi/{s.name}": figure(s.g_vendi[1.0]) for s in report.sets},
        "coverage_k": report.coverage.k,
        "exclusive_clusters": dg.MetadataValue.json(done.exclusive_counts()),
        "cluster_shares": chart(context, share_bars_png(report), "cluster_shares", "cluster shares"),
        "gradient_map": chart(context, map_png(report), "gradient_map", "2-D map"),
        "html_report": dg.MetadataValue.path(str(done.html_path)),
        "scores_rows": done.n_score_rows,
        "notes": dg.MetadataValue.json(report.notes),
    })
