"""How figures and charts appear on asset pages of the Dagster UI.

`figure` rounds a value a user compares across runs (G-Vendi, gains, accuracies) for
display; the UI then plots it in the asset's Plots view. `constant` turns a setting (q, d, a
model name) into text so that the Plots view does not draw a flat line for it. `chart`
shows a PNG inline on the asset page: the UI folds markdown of 1,000 characters or more
behind "[Show Markdown]", and an image embedded as base64 is far longer, so the PNG is
written under the instance's compute-log folder, which the webserver serves at
`/logs/<namespace...>/<name>/png`, and the markdown only links it. Where the instance keeps
no local compute logs (an ephemeral test instance, cloud storage) the PNG is embedded.

Not here: computing the figures (pipeline/) or drawing the charts (reporting/plots.py).
"""

from __future__ import annotations

import math
import os
import re
import tempfile

import dagster as dg
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager

from prismatic_assets.reporting import plots

#: Significant digits shown for a figure: G-Vendi 89.09135687376795 shows as 89.091.
DIGITS = 3
#: The compute-log namespace that holds the charts (beside the runs' stdout/stderr files).
CHARTS_NAMESPACE = "prismatic-charts"


def figure(value: float | int | None, digits: int = DIGITS) -> dg.MetadataValue:
    """A float rounded to `digits` decimals (an int stays an int; None or NaN shows as null)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return dg.MetadataValue.null()
    if isinstance(value, int) and not isinstance(value, bool):
        return dg.MetadataValue.int(value)
    return dg.MetadataValue.float(round(float(value), digits))


def constant(value: object) -> dg.MetadataValue:
    """A setting shown as text (not plotted)."""
    if isinstance(value, float):
        value = f"{value:g}"
    return dg.MetadataValue.text(str(value))


def rounded(value, digits: int = 4):
    """A JSON value with every float in it rounded to `digits` decimals, for display."""
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def chart(context: dg.AssetExecutionContext, png: bytes, name: str, alt: str) -> dg.MetadataValue:
    """Markdown that shows `png` inline on the asset page (see the module docstring)."""
    manager = context.instance.compute_log_manager
    if not isinstance(manager, LocalComputeLogManager):
        return dg.MetadataValue.md(plots.markdown_image(png, alt))
    stem = "-".join(part for part in (context.run_id, _safe(context.partition_key if context.has_partition_key
                                                               else ""), _safe(name)) if part)
    log_key = [CHARTS_NAMESPACE, _safe(context.asset_key.to_user_string()), stem]
    path = manager.get_captured_local_path(log_key, "png")
    _write_atomic(path, png)
    return dg.MetadataValue.md(f"![{alt}](/logs/{'/'.join(log_key)}/png)")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _write_atomic(path: str, data: bytes) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".chart-", dir=folder)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
