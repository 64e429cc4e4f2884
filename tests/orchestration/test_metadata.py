"""Figures rounded for display, settings as text, charts shown inline from the compute-log folder."""

from __future__ import annotations

import math
import re
from pathlib import Path

import dagster as dg

from prismatic_assets.orchestration.metadata import CHARTS_NAMESPACE, chart, constant, figure, rounded
from prismatic_assets.reporting import plots


def test_figures_are_rounded_and_settings_are_text():
    assert figure(89.09135687376795).value == 89.091
    assert figure(0.123456, 4).value == 0.1235
    assert isinstance(figure(7), dg.IntMetadataValue) and figure(7).value == 7
    assert figure(float("nan")).value is None and figure(None).value is None
    assert constant(1.0) == dg.MetadataValue.text("1") and constant(1024) == dg.MetadataValue.text("1024")
    assert rounded({"a": [0.123456789, 2], "b": {"c": 1 / 3}, "d": math.inf}) == \
        {"a": [0.1235, 2], "b": {"c": 0.3333}, "d": math.inf}


def test_a_chart_is_a_short_link_to_a_png_the_webserver_serves(tmp_path):
    png = plots.bars_png(["a", "b"], [1, 2], "n", "t")

    @dg.asset
    def charted(context) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"sizes": chart(context, png, "cluster sizes", "cluster sizes")})

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.materialize([charted], instance=instance)
        markdown = result.asset_materializations_for_node("charted")[0].metadata["sizes"].value
        manager = instance.compute_log_manager
        # the UI shows markdown under 1,000 characters inline; the webserver serves /logs/<key...>/<ext>
        assert len(markdown) < 1000
        url = re.fullmatch(r"!\[cluster sizes\]\(/logs/(.+)/png\)", markdown)[1]
        path = Path(manager.get_captured_local_path(url.split("/"), "png"))
        assert url.split("/")[0] == CHARTS_NAMESPACE and result.run_id in url
        assert path.read_bytes() == png


def test_without_local_compute_logs_the_chart_is_embedded():
    png = plots.bars_png(["a"], [1], "n", "t")

    @dg.asset
    def charted(context) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"c": chart(context, png, "c", "chart")})

    with dg.instance_for_test(overrides={"compute_logs": {
            "module": "dagster._core.storage.noop_compute_log_manager", "class": "NoOpComputeLogManager"}}) as instance:
        result = dg.materialize([charted], instance=instance)
    metadata = result.asset_materializations_for_node("charted")[0].metadata
    assert metadata["c"].value == plots.markdown_image(png, "chart")
