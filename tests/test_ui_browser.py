"""The Dagster UI driven in a real browser: what a user does first, end to end.

`dg dev` (the command behind `make ui`) serves this project on loopback with a tiny profile
(tiny random-init models, a 24-problem world seed pool), and Playwright drives the distribution's
Chromium (/usr/bin/chromium, installed by scripts/setup.sh; no browser is downloaded):
open the lineage with its groups expanded, press "Materialize all" on backbone_job's page and
wait for the run to succeed, open `g_vendi` and read its G-Vendi from the page (checked
against the store), launch round 1 of `arm_round` from its job page (the partition the
round sensor proposed: the one "Missing" selects), wait for it, and find each arm's G-Vendi
series among the asset's metadata.

Each page is screenshotted into the test's folder, and into `docs/img/` (small PNGs for the
README) when PRISMATIC_SCREENSHOTS is set to that folder.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.instance.ref import InstanceRef

from prismatic_assets.store.store import MetadataStore
from tests.ui_process import REPO, free_port, start_ui, ui_home

CHROMIUM = "/usr/bin/chromium"
GROUPS = ["backbone", "arms", "synthesis", "distillation", "analysis"]
#: The global lineage with every group open (the UI keeps the open groups in the address).
LINEAGE_PATH = "/asset-groups?expanded=" + ",".join(f"global@global:{g}" for g in GROUPS)
#: A run from the UI: about 2 min on a quiet 2-core machine; far more on a loaded one.
RUN_TIMEOUT_S = 1800

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ui(tmp_path_factory, tiny_model_dir):
    """(base URL, DAGSTER_HOME, profile data folder) of `dg dev` serving a tiny profile."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install the distribution's Chromium (Debian: apt-get install chromium; "
                    "scripts/setup.sh does it as root)")
    root = tmp_path_factory.mktemp("ui")
    llm = {"backend": "transformers", "model": tiny_model_dir}
    profile = {
        "profile": "tiny-ui", "data_dir": str(root / "data"),
        "seed": {"source": "world", "holdout_fraction": 0.2},
        "proxy": {"model": tiny_model_dir, "max_length": 256}, "projection": {"dim": 64},
        "clustering": {"ratio": 0.2},
        "synthesis": {"generator": llm, "teacher": llm, "requests_per_round": 2},
        "evaluation": {"engine": {"backend": "transformers"}, "gsm_symbolic": 2, "max_tokens": 8},
        "world": {"families": ["basic_arithmetic", "gcd", "leg_counting", "letter_counting"], "levels": [0, 1],
                  "pool": {"size": 24, "family_zipf": 1.0}, "held_out_per_family": 1},
        "arms": {"arms": ["prismatic", "random"], "rounds": 1, "budget": 2, "requests_per_round": 3},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(profile))
    home = ui_home(root)
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO),
           "PRISMATIC_PROFILE": str(root / "tiny.yaml")}
    env.pop("MLFLOW_TRACKING_URI", None)
    dg_cli = str(Path(sys.executable).parent / "dg")
    proc = start_ui([dg_cli, "dev", "-h", "127.0.0.1", "-p", str(port), "--use-active-venv"], env, root / "ui.log")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (root / "ui.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/server_info", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "dg dev did not answer within 300 s"
                time.sleep(1)
        yield base, home, root / "data"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def _wait_for_run(home: Path, job: str, before: set[str]) -> dg.DagsterRun:
    """The run of `job` that a click started (not in `before`), once it has ended."""
    started = time.monotonic()
    with _instance(home) as instance:
        run = None
        while time.monotonic() < started + RUN_TIMEOUT_S:
            new = [r for r in instance.get_runs(filters=dg.RunsFilter(job_name=job)) if r.run_id not in before]
            if new:
                run = new[0]
                if run.is_finished:
                    return run
            else:
                assert time.monotonic() < started + 60, f"the click started no run of {job} within 60 s"
            time.sleep(2)
    raise AssertionError(f"the run of {job} did not end within {RUN_TIMEOUT_S} s: {run and run.status}")


def _run_ids(home: Path) -> set[str]:
    with _instance(home) as instance:
        return {r.run_id for r in instance.get_runs()}


def _run_failure(home: Path, run: dg.DagsterRun) -> str:
    with _instance(home) as instance:
        failures = [e.user_message for e in instance.all_logs(run.run_id)
                    if e.dagster_event and e.dagster_event.is_step_failure]
    return "; ".join(failures)[-3000:]


class Shots:
    """Screenshots of each page: into the test folder, and into PRISMATIC_SCREENSHOTS if set."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.publish = os.environ.get("PRISMATIC_SCREENSHOTS")

    def __call__(self, page, name: str) -> None:
        path = self.folder / f"ui-{name}.png"
        page.screenshot(path=str(path))
        if self.publish:
            from PIL import Image

            target = Path(self.publish) / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            image = Image.open(path).convert("RGB")
            image.thumbnail((1280, 1280))  # small committed PNGs: 1280 px wide, 64 colours
            image.quantize(colors=64).save(target, optimize=True)


def test_a_user_materializes_the_backbone_reads_g_vendi_and_starts_an_arm_round(ui, browser, tmp_path):
    base, home, data = ui
    shots = Shots(tmp_path)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(240_000)  # a loaded 2-core machine draws the graph slowly

    # The lineage, every group open: the backbone's assets are drawn (the graph draws only the
    # nodes in view, and it opens centred on the backbone).
    page.goto(base + LINEAGE_PATH)
    for asset in ("seed_samples", "gradient_clusters", "g_vendi"):
        page.get_by_text(asset, exact=True).first.wait_for()
    shots(page, "lineage")

    # "Materialize all" on backbone_job's page runs the backbone (and nothing else).
    page.goto(base + "/locations/prismatic/jobs/backbone_job")
    before = _run_ids(home)
    page.get_by_role("button", name="Materialize all").click()
    page.get_by_text("Launched run").wait_for()
    run = _wait_for_run(home, "backbone_job", before)
    assert run.status == dg.DagsterRunStatus.SUCCESS, _run_failure(home, run)
    with _instance(home) as instance:
        materialized = {e.asset_key.to_user_string() for e in instance.all_logs(run.run_id)
                        if e.dagster_event and e.dagster_event.is_step_materialization
                        for e in [e.dagster_event]}
    assert materialized == {"seed_samples", "gradient_embeddings", "gradient_clusters", "g_vendi"}
    page.goto(f"{base}/runs/{run.run_id}")
    page.get_by_text("Success").first.wait_for()
    page.get_by_text("Loading run logs").wait_for(state="hidden")
    shots(page, "backbone-run")

    # g_vendi's page shows its G-Vendi, rounded, equal to the score the store holds.
    page.goto(base + "/assets/g_vendi")
    row = page.locator("tr", has=page.locator("td", has_text=re.compile(r"^g_vendi$"))).first
    row.wait_for()
    shown = float(row.locator("td").last.inner_text())  # label | time | value
    stored = MetadataStore(data / "prismatic.duckdb").query(
        "SELECT value FROM scores WHERE scope = 'seed' AND metric = 'g_vendi' ORDER BY created_at DESC LIMIT 1")
    assert shown == round(stored["value"][0], 3) and 1.0 <= shown <= 24
    shots(page, "g_vendi")

    # Round 1 of the arms from arm_round_job's page: the sensor proposed partition 1.
    with _instance(home) as instance:
        deadline = time.monotonic() + 120
        while not instance.has_dynamic_partition("arm_rounds", "1"):
            assert time.monotonic() < deadline, "the sensor add_next_round_partitions did not add round 1"
            time.sleep(2)
    page.goto(base + "/locations/prismatic/jobs/arm_round_job")
    before = _run_ids(home)
    page.get_by_role("button", name="Materialize").first.click()  # "Materialize…" (a partition to pick)
    dialog = page.get_by_role("dialog").last
    dialog.get_by_role("button", name="Missing", exact=True).click()  # the next round is the one missing
    dialog.get_by_text("1 partition", exact=True).wait_for()
    shots(page, "arm-round-launch")
    dialog.get_by_role("button", name="Launch 1 run").click()
    run = _wait_for_run(home, "arm_round_job", before)
    assert run.status == dg.DagsterRunStatus.SUCCESS, _run_failure(home, run)
    assert run.tags["dagster/partition"] == "1"

    # arm_round's page shows the round's figures, one numeric series per arm (what its Plots view charts).
    page.goto(base + "/assets/arm_round")
    for arm in ("prismatic", "random"):
        page.get_by_text(f"g_vendi/{arm}", exact=True).first.wait_for()
    shots(page, "arm_round")

    # Overview lists the runs under the code location's jobs.
    page.goto(base + "/overview/activity/timeline")
    page.get_by_text("backbone_job").first.wait_for()
    shots(page, "overview")
