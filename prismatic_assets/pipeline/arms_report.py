"""What an arm round shows: numbers per arm per round for Dagster's metadata, MLflow metrics and charts.

Three figures per arm are followed round by round: G-Vendi of its pool, the number of
(family, level) cells its pool covers, and the entropy of its pool's cell counts. Round 0
is the seed pool (the "before" of round 1). No Dagster here: the asset wraps these numbers
in its metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from prismatic_assets.infra.config import Config
from prismatic_assets.pipeline.arms import ArmRoundReport
from prismatic_assets.store.arms_tables import arm_history
from prismatic_assets.store.store import MetadataStore

#: (metric name, arm_rounds column before, column after, axis label)
FIGURES = (("g_vendi", "g_vendi_before", "g_vendi_after", "G-Vendi of the arm's pool"),
           ("cells", "cells_before", "cells_after", "(family, level) cells in the pool"),
           ("cell_entropy", "cell_entropy_before", "cell_entropy_after", "entropy of the pool's cell counts (nats)"))


def round_numbers(report: ArmRoundReport) -> dict[str, float]:
    """Numeric values per arm (``<figure>/<arm>``): what Dagster's Plots tab and MLflow chart."""
    numbers: dict[str, float] = {}
    for arm, r in report.arms.items():
        numbers.update({f"g_vendi/{arm}": r.g_vendi_after, f"g_vendi_gain/{arm}": r.gain,
                        f"cells/{arm}": r.cells_after, f"cell_entropy/{arm}": r.cell_entropy_after,
                        f"accepted/{arm}": len(r.accepted), f"shortfall/{arm}": r.shortfall,
                        f"passed_filter/{arm}": sum(1 for c in r.verified if c.in_sparse),
                        f"verified/{arm}": len(r.verified)})
    return numbers


def history(store: MetadataStore, arms: Sequence[str]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{figure: {arm: [(round, value), ...]}} from round 0 (the seed pool) to the last stored round."""
    hist = arm_history(store)
    out: dict[str, dict[str, list[tuple[int, float]]]] = {name: {} for name, *_ in FIGURES}
    for arm in arms:
        rows = hist.filter(hist["arm"] == arm).sort("round")
        if rows.is_empty():
            continue
        for name, before, after, _ in FIGURES:
            out[name][arm] = [(0, float(rows[before][0]))] + list(zip(rows["round"].to_list(),
                                                                       map(float, rows[after].to_list())))
    return out


def charts(store: MetadataStore, arms: Sequence[str]) -> dict[str, bytes]:
    """One PNG line chart per figure, one line per arm, over rounds 0..last."""
    from prismatic_assets.reporting import plots

    series = history(store, arms)
    pngs = {}
    for name, _, _, label in FIGURES:
        lines = series[name]
        if not lines:
            continue
        rounds = [r for r, _ in next(iter(lines.values()))]
        pngs[name] = plots.series_png(rounds, {arm: [v for _, v in points] for arm, points in lines.items()},
                                      "round (0: seed pool)", label, f"{label} per arm per round")
    return pngs


def log_arm_round(tracker, run: str, store: MetadataStore, report: ArmRoundReport, config: Config) -> dict[str, Path]:
    """Log one round to its MLflow run: settings, the round's numbers (step = round), each
    figure's whole history per arm (so the run's charts show every round so far), and the PNG
    charts. Returns the chart files written under ``<data_dir>/plots``."""
    tracker.log_params(run, {"round": report.round,
                             "arms": config.arms.model_dump(mode="json", exclude={"experiment"}),
                             "world": config.world.model_dump(mode="json"),
                             "clustering_ratio": config.clustering.ratio})
    tracker.log_metrics(run, round_numbers(report), step=report.round)
    for name, lines in history(store, config.arms.arms).items():
        for arm, points in lines.items():
            tracker.log_metric_history(run, f"{name}_by_round/{arm}", points)
    folder = config.data_path / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, png in charts(store, config.arms.arms).items():
        path = folder / f"arms-round-{report.round}-{name}.png"
        path.write_bytes(png)
        tracker.log_artifact(run, path, "plots")
        paths[name] = path
    return paths


def arm_table(report: ArmRoundReport) -> str:
    """Markdown: one row per arm of this round."""
    lines = ["| arm | pool before | verified | passed filter | accepted (shortfall) | G-Vendi before | after | gain | "
             "cells | cell entropy |", "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, r in report.arms.items():
        lines.append(f"| {arm} | {r.n_pool_before} | {len(r.verified)} | {sum(1 for c in r.verified if c.in_sparse)} "
                     f"| {len(r.accepted)} ({r.shortfall}) | {r.g_vendi_before:.3f} | {r.g_vendi_after:.3f} | "
                     f"{r.gain:+.3f} | {r.cells_before} -> {r.cells_after} | {r.cell_entropy_before:.3f} -> "
                     f"{r.cell_entropy_after:.3f} |")
    return "\n".join(lines)


def log_lines(report: ArmRoundReport) -> list[str]:
    """A few log lines per round: what each arm was offered, accepted and reached."""
    lines = []
    for arm, r in report.arms.items():
        lines.append(f"arm round {report.round}, {arm}: {len(r.verified)} of {len(r.candidates)} candidates verified "
                     f"(rejected: {r.rejected or 'none'}), {sum(1 for c in r.verified if c.in_sparse)} passed the "
                     f"filter, accepted {len(r.accepted)} (shortfall {r.shortfall}); G-Vendi {r.g_vendi_before:.3f} -> "
                     f"{r.g_vendi_after:.3f}, cells {r.cells_before} -> {r.cells_after}")
    if report.removed_rounds:
        lines.append(f"rounds {report.removed_rounds} were built on this round's earlier acceptances and were "
                     "removed: run them again")
    return lines
