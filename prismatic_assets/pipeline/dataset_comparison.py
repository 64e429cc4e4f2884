"""The seed pool beside the data sets of the profile's `compare` section (the `dataset_comparison` asset's work).

`comparison_sets` loads what the section names (the seed pool first, unless
`include_seed: false`) and refuses a section with nothing to compare. `compare_with_seed`
compares them under the pool's proxy and projection (`pipeline.compare.compare_sets`: the
seed pool's vectors come from the store, the other sets' are cached there too), stores every
set's metrics as `scores` rows of scope "compare:<name>" and writes the self-contained HTML
report next to the store (`<data_dir>/reports/dataset_comparison.html`). No Dagster.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from prismatic_assets.core.gradient_spec import Embedding
from prismatic_assets.core.samples import Sample
from prismatic_assets.infra.config import CompareConfig, SeedConfig, WorldConfig
from prismatic_assets.pipeline.compare import ComparisonReport, compare_sets, store_comparison
from prismatic_assets.pipeline.datasets import LoadedSet, load_sets
from prismatic_assets.pipeline.embedder import Embedder
from prismatic_assets.pipeline.seed import load_seed
from prismatic_assets.reporting.compare_report import metric_rows, render_html
from prismatic_assets.store.store import MetadataStore

SEED_SET = "seed"
REPORT_NAME = "dataset_comparison.html"


@dataclass(frozen=True)
class ComparisonSets:
    sets: list[LoadedSet]
    notes: list[str] = field(default_factory=list)


def comparison_sets(settings: CompareConfig, seed: SeedConfig, world: WorldConfig | None = None) -> ComparisonSets:
    """The sets to compare: the seed pool (`include_seed`) and `datasets`; ValueError naming the fix when
    there is nothing to compare or the names do not match the data sets. `world`: the profile's world
    block, needed when the seed source is 'world'."""
    if not settings.datasets and not settings.include_seed:
        raise ValueError("nothing to compare: list data sets under `compare.datasets` in the profile, or set "
                         "`compare.include_seed: true` to report the seed pool")
    if settings.names and len(settings.names) != len(settings.datasets):
        raise ValueError(f"compare.names has {len(settings.names)} entries for {len(settings.datasets)} "
                         "data sets: give one name per data set, or none")
    sets: list[LoadedSet] = []
    if settings.include_seed:
        loaded = load_seed(seed, world)
        sets.append(LoadedSet(SEED_SET, f"seed pool ({seed.source})", list(loaded.pool),
                              list(loaded.result.rejections)))
    if settings.datasets:
        sets += load_sets(settings.datasets, names=settings.names or None, fields=settings.fields,
                          limit=settings.limit)
    notes = []
    if len(sets) == 1 and settings.include_seed:
        notes.append("no data sets listed under compare.datasets: the seed pool is reported alone; add files "
                     "there to compare them with it")
    return ComparisonSets(sets, notes)


@dataclass(frozen=True)
class DatasetComparison:
    report: ComparisonReport
    html_path: Path
    n_score_rows: int

    def set_names(self) -> list[str]:
        return [s.name for s in self.report.sets]

    def g_vendi(self) -> dict[str, dict[str, float]]:
        """Each set's G-Vendi per Renyi order ("1", "2", "inf", ...)."""
        return {s.name: {f"{q:g}": v for q, v in s.g_vendi.items()} for s in self.report.sets}  # inf: "inf"

    def exclusive_counts(self) -> dict[str, int]:
        """How many clusters of the union only each set fills."""
        return {name: len(clusters) for name, clusters in self.report.coverage.exclusive.items()}

    def metric_table(self) -> str:
        """The sets' metrics as a Markdown table (one column per set)."""
        names = self.set_names()
        header = "| metric | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
        return header + "\n".join(f"| {label} | " + " | ".join(cells) + " |"
                                   for label, cells in metric_rows(self.report))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compare_with_seed(store: MetadataStore, embedder: Embedder, chosen: ComparisonSets, settings: CompareConfig, *,
                      model: str, run_id: str | None = None,
                      log: Callable[[str], None] = lambda _: None,
                      on_progress: Callable[[str, int, int], None] | None = None) -> DatasetComparison:
    """Compare the chosen sets, store their metrics and write the HTML report (see the module docstring).

    on_progress(stage, done, total) sees every gradient; without it `log` gets a line every 5%."""
    log_every = max(1, sum(len(s.samples) for s in chosen.sets) // 20)

    def progress(i: int, n: int, sample: Sample, outcome: Embedding) -> None:
        if outcome.error:
            log(f"gradient of {sample.sample_id} failed: {outcome.error}")
        if on_progress is not None:
            on_progress("gradients", i, n)
        elif i % log_every == 0 or i == n:
            log(f"gradients {i}/{n}")

    report = compare_sets(chosen.sets, embedder, store, qs=settings.qs, clusters=settings.clusters,
                          cluster_seed=settings.cluster_seed, examples=settings.examples, model=model, run_id=run_id,
                          gradient_progress=progress, on_stage=log)
    report.notes.extend(chosen.notes)
    for note in report.notes:
        log(note)
    n_rows = store_comparison(store, report, chosen.sets, run_id=run_id)
    html_path = Path(store.path).parent / "reports" / REPORT_NAME
    _write_atomic(html_path, render_html(report, title="Data set comparison (dataset_comparison asset)"))
    return DatasetComparison(report, html_path, n_rows)
