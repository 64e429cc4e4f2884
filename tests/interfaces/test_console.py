"""The pipeline commands' console: rates over recent work, one line per step with its figure,
retries and failures said plainly, and everything else kept in the log file."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from prismatic_assets.core.generation import GenerationError
from prismatic_assets.interfaces.console import Console, Rate, RunView, figure_line, format_seconds, progress_text
from prismatic_assets.interfaces.runs import RunOutcome
from prismatic_assets.orchestration.progress import StepProgress
from prismatic_assets.orchestration.retry import retry_note, retry_transient_only

ROOT = Path(__file__).resolve().parents[2]


def test_the_rate_follows_the_recent_pace_not_the_average():
    rate = Rate(window_s=60)
    for t in range(0, 301, 3):  # 5 minutes at 1 item per 3 s
        rate.add(float(t), t // 3)
    assert rate.per_second() == pytest.approx(1 / 3)
    done = 100
    for t in range(303, 424, 3):  # then 3 items per 3 s for 2 minutes
        done += 3
        rate.add(float(t), done)
    assert rate.per_second() == pytest.approx(1.0, rel=0.05)  # the whole-run average is 0.52/s


def test_a_batch_delivered_at_once_is_spread_over_the_time_it_took():
    rate = Rate(window_s=60)
    rate.add(0.0, 0)
    rate.add(30.0, 60)  # 60 items reported together after 30 s of work
    assert rate.per_second() == pytest.approx(2.0)


def test_progress_text_shows_done_total_rate_and_time_left():
    text = progress_text("gradients", 60, 216, rate=0.5)
    assert "60/216" in text and "2.0 s each" in text and "5.2 min left" in text  # 156 left / 0.5 per s = 312 s
    assert "[######" in text and "/s" not in progress_text("gradients", 1, 4, rate=0.25)
    assert format_seconds(59) == "59 s" and format_seconds(7200) == "2.0 h"


def test_step_progress_logs_at_most_every_few_seconds_plus_first_and_last():
    now = [0.0]
    lines: list[str] = []
    step = StepProgress(lines.append, every_s=3.0, clock=lambda: now[0])
    for i in range(1, 101):  # 100 items, one every 0.1 s
        now[0] = i * 0.1
        step("gradients", i, 100)
    assert lines[0] == "progress: gradients 1/100" and lines[-1] == "progress: gradients 100/100"
    assert len(lines) == 2 + 3  # 1, then at 3.1 s, 6.1 s, 9.1 s, then the last (10 s)


@pytest.mark.parametrize("asset,meta,expected", [
    ("g_vendi", {"g_vendi": 89.09135687376795, "n": "216", "dim": "1024", "q": "1"},
     "G-Vendi 89.091 (N=216, d=1024, q=1)"),
    ("gradient_clusters", {"k": 11, "n_sparse": 5}, "K=11, 5 sparse clusters"),
    ("arm_round", {"accepted/prismatic": 24, "accepted/random": 24, "g_vendi/prismatic": 90.1234,
                   "g_vendi/random": 89.5}, "accepted / G-Vendi: prismatic 24 / 90.123, random 24 / 89.500"),
])
def test_each_asset_line_carries_its_figure(asset, meta, expected):
    assert figure_line(asset, None, meta) == expected


def _view() -> tuple[RunView, io.StringIO, io.StringIO]:
    out, log = io.StringIO(), io.StringIO()
    return RunView(Console(out, out, log, tty=False), "demo"), out, log


def _replay(instance: dg.DagsterInstance, run_id: str, view: RunView) -> None:
    for record in instance.get_records_for_run(run_id, limit=10_000).records:
        view(record.event_log_entry)


def test_a_run_prints_one_line_per_asset_its_retries_and_keeps_the_rest_in_the_log(tmp_path):
    attempts = {"n": 0}

    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=1))
    def g_vendi(context) -> dg.MaterializeResult:
        attempts["n"] += 1
        with retry_transient_only():
            if attempts["n"] == 1:
                raise GenerationError("server restarting")
        step = StepProgress(context.log.info, every_s=0.0)
        for i in range(1, 6):
            step("gradients", i, 5)
        return dg.MaterializeResult(metadata={**retry_note(context), "g_vendi": 12.34567, "n": "5", "dim": "8",
                                              "q": "1"})

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.materialize([g_vendi], instance=instance)
        view, out, log = _view()
        _replay(instance, result.run_id, view)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("  g_vendi: attempt 1 failed (GenerationError: server restarting)")
    assert lines[1].startswith("  g_vendi ") and "G-Vendi 12.346 (N=5, d=8, q=1)" in lines[1]
    assert "after 1 failed attempt(s): GenerationError: server restarting" in lines[1]
    assert len(lines) == 2  # no progress line for a step of seconds without a terminal, no debug event
    assert "STEP_START" in log.getvalue() and "progress: gradients 5/5" in log.getvalue()


def test_a_failed_run_is_one_paragraph_with_the_cause_and_the_log(tmp_path):
    @dg.asset
    def arm_round() -> None:
        with retry_transient_only():
            raise ValueError("arms.budget must be > 0: set it in the profile")

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.materialize([arm_round], instance=instance, raise_on_error=False)
        view, out, _ = _view()
        _replay(instance, result.run_id, view)
        run = instance.get_run_by_id(result.run_id)
    paragraph = view.failure_paragraph(RunOutcome(run.run_id, run.job_name, run.status, 12.0),
                                       tmp_path / "demo.log")
    assert paragraph.startswith("[demo] failed after 12 s: step arm_round failed: ValueError: arms.budget must be "
                                "> 0: set it in the profile.")
    assert str(tmp_path / "demo.log") in paragraph and "\n" not in paragraph


def test_the_command_console_sends_process_output_to_the_log_and_its_lines_to_the_terminal(tmp_path):
    script = textwrap.dedent(f"""
        import subprocess, sys, warnings
        from pathlib import Path
        from prismatic_assets.interfaces.console import CommandConsole
        with CommandConsole("demo", Path({str(tmp_path)!r})) as console:
            console.say("[demo] a line for a person")
            print("print inside the command")
            warnings.warn("a library warning")
            subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child progress bar\\\\n')"])
            print(console.log_path, file=sys.__stderr__)
        print("after the command")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[demo] a line for a person\nafter the command\n"
    log = (tmp_path / next(p.name for p in tmp_path.iterdir())).read_text()
    for text in ("[demo] a line for a person", "print inside the command", "a library warning",
                 "child progress bar"):
        assert text in log
