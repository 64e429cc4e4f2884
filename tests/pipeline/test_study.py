"""The correlation study end to end on a tiny profile: killed and resumed, rerun, on Ray, with failures.

Real parts: `prismatic study` in its own process group (the CLI, `dagster asset materialize`,
the asset, SFT through Pipes) SIGKILLed mid-training of the second set's student and run
again; a DuckDB file; MLflow on SQLite; reasoning-gym problems and scorers; per-sample
gradients and SFT of a tiny random-init Llama with the packaged tokenizer; a local Ray with
2 CPUs whose student tasks take half a CPU each. One torch thread everywhere, so the local
and the Ray students compute the same floats.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from prismatic_assets.infra.config import build_config, load_config
from prismatic_assets.pipeline.study import (
    BASE,
    StudentJob,
    _launch_logged,
    load_report,
    prepare,
    ranking_table,
    run_key,
    run_student,
    run_study,
    sets_table,
    study_distill,
    study_id,
)
from prismatic_assets.store import schema as S
from prismatic_assets.store.store import MetadataStore
from prismatic_assets.store.study_tables import row_counts
from tests.conftest import write_profile

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DESIGNS = ["span:3:1", "single-cluster"]  # a label design, then one that picks by gradient


def tiny_values(data_dir: Path, model_dir: str, **study) -> dict:
    return {
        "data_dir": str(data_dir),
        "proxy": {"model": model_dir, "max_length": 128},
        "projection": {"dim": 32},
        "distill": {"student": model_dir, "launcher": "python", "sft": {"max_length": 128, "warmup_ratio": 0.0}},
        "study": {"families": ["basic_arithmetic", "gcd", "leg_counting"], "levels": [0], "pool_size": 36,
                  "designs": DESIGNS, "set_size": 6, "max_steps": 20, "save_steps": 4, "batch_size": 2,
                  "learning_rate": 1e-3, "eval_per_family": 2, "ood_families": ["chain_sum", "spell_backward"],
                  "max_tokens": 8, "bootstrap": 200, "engine": {"backend": "transformers"}, **study},
    }


def _sql(store: Path, query: str, params=None):
    for _ in range(600):  # the study holds the file only for its short transactions
        try:
            con = duckdb.connect(str(store), read_only=True)
        except duckdb.Error:
            time.sleep(0.05)
            continue
        try:
            return con.execute(query, params or []).fetchall()
        finally:
            con.close()
    raise AssertionError(f"the store stayed locked: {query}")


@pytest.fixture(scope="module")
def one_thread():
    """One torch/OpenMP thread in this process and every child (SFT, Ray workers)."""
    import torch

    before, threads = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if before is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = before


class CliStudy:
    """`prismatic study` against a temporary DAGSTER_HOME, in its own process group."""

    def __init__(self, root: Path, model_dir: str) -> None:
        self.root = root
        self.home = home = root / "home"
        home.mkdir()
        config = yaml.safe_load((REPO / "dagster.yaml").read_text())
        for key in ("storage", "local_artifact_storage", "compute_logs"):  # state under the temporary home
            config.pop(key, None)
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        self.profile = write_profile(root, tiny_values(root / "data", model_dir), name="study")
        self.config = load_config(self.profile)
        self.store = self.config.store_path
        self.env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.env.pop("PRISMATIC_DATA_DIR", None)
        self.runs = 0

    def run(self, kill_when=None, timeout: float = 900) -> tuple[str | int, str]:
        log = self.root / f"study-{self.runs}.log"
        self.runs += 1
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "prismatic_assets.interfaces.cli", "study", "--profile",
                                     self.profile], cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if kill_when is not None and kill_when():
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(30)
                    return "killed", log.read_text()
                assert time.monotonic() < deadline, f"study still running after {timeout:.0f} s"
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        text = log.read_text()
        assert kill_when is None, f"the study finished before it could be killed:\n{text[-3000:]}"
        assert proc.returncode == 0, text[-5000:]
        # The console prints a line per step; the steps' own log lines are in the full log it names.
        assert "full log: " in text, text[-3000:]
        return proc.returncode, text + Path(text.split("full log: ")[1].split()[0]).read_text()

    def checkpoint_of(self, set_name: str) -> bool:
        """A complete SFT checkpoint of this set's student is on disk (it is mid-training)."""
        from prismatic_assets.core.sft import complete_checkpoints

        label = "study-" + set_name.replace(":", "-")
        folders = self.config.data_path.glob(f"study/*/models/arm-{label}-*")
        return any(complete_checkpoints(folder) for folder in folders)

    def students(self) -> dict[str, tuple]:
        if not self.store.exists():
            return {}
        return {r[0]: r[1:] for r in _sql(self.store, f"SELECT set_name, status, finished_at, mlflow_run_id "
                                                      f"FROM {S.STUDY_STUDENTS}")}


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, tiny_model_dir, one_thread):
    cli = CliStudy(tmp_path_factory.mktemp("study-cli"), tiny_model_dir)
    outcome, _ = cli.run(kill_when=lambda: cli.checkpoint_of(DESIGNS[1]))
    assert outcome == "killed"
    before = cli.students()
    code, log = cli.run()
    return cli, before, log


def test_a_killed_study_resumes_without_retraining_finished_students(killed_and_resumed):
    cli, before, log = killed_and_resumed
    # Killed while the second set's student trained: the base model and the first set had results.
    assert set(before) == {BASE, DESIGNS[0]} and all(v[0] == "finished" for v in before.values())
    after = cli.students()
    assert set(after) == {BASE, *DESIGNS} and all(v[0] == "finished" for v in after.values())
    for name, row in before.items():
        assert after[name] == row  # same row: not trained or evaluated again
    assert "students: 2 with a result, 1 to run" in log
    assert f"student {DESIGNS[1]}: finished" in log and "resumed from checkpoint-" in log
    assert f"student {DESIGNS[0]}: training" not in log
    # No process of the killed run survived it (SFT included).
    import psutil

    assert not [p for p in psutil.process_iter(["cmdline"]) if str(cli.config.data_path) in " ".join(
        p.info["cmdline"] or []) and "sft_worker" in " ".join(p.info["cmdline"] or [])]
    # The CLI printed the tables from the store.
    assert "Spearman rho over the sets" in log and "| g_vendi_q1 |" in log


def test_the_stored_study_is_complete_and_consistent(killed_and_resumed):
    cli, _, _ = killed_and_resumed
    store = MetadataStore(cli.store)
    report = load_report(store, cli.config)
    assert [s.name for s in report.sets] == DESIGNS and all(len(s.members) == 6 for s in report.sets)
    ids = [m.sample_id for s in report.sets for m in s.members]
    assert len(set(ids)) == len(ids)  # disjoint
    held = {i.sample.sample_id for items in prepare(cli.config.study).tasks.values() for i in items}
    assert not held & set(ids)
    for student in report.students:
        for a in student.accuracy:
            answers = store.query(f"SELECT correct FROM {S.EVAL_RESULTS} WHERE model_role = ? AND benchmark = ?",
                                  [f"study:{student.set_name}", a.split])
            assert (a.n, a.correct) == (answers.height, int(answers["correct"].sum()))  # from the graded answers
            assert a.low <= a.accuracy <= a.high
    assert {a.split: a.n for a in report.students[0].accuracy} == {"in_distribution": 6, "out_of_distribution": 4}
    spans = {s.name: {(m.meta["family"], m.meta["level"]) for m in s.members} for s in report.sets}
    assert len(spans["span:3:1"]) == 3
    assert report.value("span:3:1", "family_level_entropy") == pytest.approx(1.0986, abs=1e-3)  # ln 3: 2 per family
    assert {r.measure for r in report.rankings} >= {"g_vendi_q1", "g_vendi_q2", "g_vendi_qinf", "embedding_vendi",
                                                    "distinct_1", "compression_ratio", "family_level_entropy"}
    # MLflow: one parent run per study run, one child per student, nested by the parent tag.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cli.config.data_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("prismatic").experiment_id])
    parents = {r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") is None}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in parents]
    assert sorted(r.data.tags["set"] for r in children) == sorted([BASE, *DESIGNS])
    assert all(r.data.tags["study_id"] == report.study_id for r in children)
    finished = [r for r in runs if r.info.run_id in parents and r.info.status == "FINISHED"]
    assert len(finished) == 1  # the killed run's parent never finished
    artifacts = {a.path for a in client.list_artifacts(finished[0].info.run_id, "study")}
    assert {"study/ranking.md", "study/sets.md", "study/scatter-g_vendi_q1.png"} <= artifacts
    # The asset's metadata in Dagster: the study, its tables, one scatter per measure, the stage times.
    import dagster as dg

    with dg.DagsterInstance.from_config(str(cli.home)) as instance:
        metadata = instance.get_latest_materialization_event(dg.AssetKey("study")).asset_materialization.metadata
    assert metadata["study_id"].value == report.study_id and metadata["sets"].value == len(DESIGNS)
    assert "| g_vendi_q1 |" in metadata["ranking"].value and "span:3:1" in metadata["sets_table"].value
    assert metadata["scatter/g_vendi_q1"].value.startswith("![g_vendi_q1 vs accuracy](/logs/prismatic-charts/study/")
    assert {"sets", "gradients", "measures", "training", "evaluation"} <= set(metadata["seconds_by_stage"].value)


def test_bench_study_reads_the_stage_split_of_a_finished_run(killed_and_resumed, tmp_path):
    """`bench_study --from-run`: the stage times the finished run logged, each student's seconds from the store."""
    import json

    from mlflow import MlflowClient

    cli, _, _ = killed_and_resumed
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_study", "--profile", cli.profile, "--from-run",
                           str(cli.config.data_path), "--wall", "123.5", "--load", "0.5, 1.5", "--out", str(tmp_path)],
                          cwd=REPO, env=cli.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "study.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{cli.config.data_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("prismatic").experiment_id])
    finished = [r for r in runs if r.data.tags.get("mlflow.parentRunId") is None and r.info.status == "FINISHED"]
    assert result["seconds"] == {k.split("/", 1)[1]: v for k, v in finished[0].data.metrics.items()
                                 if k.startswith("seconds/")}
    assert {"sets", "gradients", "measures", "training", "evaluation"} <= set(result["seconds"])
    stored = {r[0]: (r[1], r[2]) for r in _sql(cli.store, f"SELECT set_name, train_seconds, eval_seconds "
                                                          f"FROM {S.STUDY_STUDENTS}")}
    assert {row["set"]: (row["train_seconds"], row["eval_seconds"]) for row in result["per_student"]} == {
        name: (t or 0.0, e or 0.0) for name, (t, e) in stored.items()}
    assert result["total_seconds"] == 123.5 and result["sets"] == len(DESIGNS)
    assert result["n_pool"] == len(prepare(cli.config.study).pool.samples)  # from the store, as drawn
    table = (tmp_path / "study.md").read_text()
    assert "| total | 123.5 | |" in table and "load average 0.5 at the start, 1.5 at the end" in table


def test_a_rerun_of_a_finished_study_adds_no_rows(killed_and_resumed):
    cli, _, _ = killed_and_resumed
    store = MetadataStore(cli.store)
    counts = row_counts(store)
    lines = []
    report = run_study(store, cli.config, log=lines.append)
    assert row_counts(store) == counts
    assert report.trained == [] and "students: 3 with a result, 0 to run (one after another)" in lines


def test_the_ray_path_gives_the_same_table(killed_and_resumed, tmp_path, tiny_model_dir):
    import ray

    cli, _, _ = killed_and_resumed
    values = tiny_values(tmp_path / "data", tiny_model_dir)
    values["compute"] = {"backend": "ray", "workers": 2, "cpus_per_worker": 0.5}
    config = build_config(values)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        lines = []
        ray_report = run_study(MetadataStore(config.store_path), config, log=lines.append)
    finally:
        ray.shutdown()
    assert "students: 0 with a result, 3 to run (Ray, 2 at a time)" in lines
    local = load_report(MetadataStore(cli.store), cli.config)
    assert ray_report.study_id == local.study_id
    assert [[m.sample_id for m in s.members] for s in ray_report.sets] == \
        [[m.sample_id for m in s.members] for s in local.sets]
    assert sets_table(ray_report) == sets_table(local)
    assert ranking_table(ray_report) == ranking_table(local)
    answers = {}
    for path in (cli.store, config.store_path):
        answers[path] = sorted(_sql(path, f"SELECT model_role, sample_id, response FROM {S.EVAL_RESULTS}"))
    assert answers[cli.store] == answers[config.store_path]


def test_settings_that_define_the_sets_make_a_new_study_id(tiny_model_dir, tmp_path):
    base = build_config(tiny_values(tmp_path, tiny_model_dir))
    same_sets = {"max_steps": 10, "learning_rate": 2e-3, "bootstrap": 500, "eval_per_family": 2}
    assert study_id(build_config(tiny_values(tmp_path, tiny_model_dir, **same_sets))) == study_id(base)
    assert run_key(build_config(tiny_values(tmp_path, tiny_model_dir, max_steps=10))) != run_key(base)
    for change in ({"set_size": 5}, {"seed": 1}, {"pool_size": 40}, {"designs": ["span:1:1", "random:0"]},
                   {"disjoint": False}, {"families": ["basic_arithmetic", "gcd", "lcm"]}):
        assert study_id(build_config(tiny_values(tmp_path, tiny_model_dir, **change))) != study_id(base), change
    # The proxy shapes the sets only when a design picks by gradient.
    other_proxy = {**tiny_values(tmp_path, tiny_model_dir), "proxy": {"model": tiny_model_dir, "max_length": 64}}
    assert study_id(build_config(other_proxy)) != study_id(base)
    label_only = tiny_values(tmp_path, tiny_model_dir, designs=["span:1:1", "random:0"])
    assert study_id(build_config({**label_only, "proxy": {"model": "other", "max_length": 64}})) == \
        study_id(build_config(label_only))


def test_a_failed_student_is_stored_with_its_reason_and_the_others_go_on(tmp_path, tiny_model_dir, one_thread):
    config = build_config(tiny_values(tmp_path / "data", tiny_model_dir, designs=["random:0", "random:1"],
                                      max_steps=2, save_steps=1))

    def launch(command: list[str]) -> None:
        broken = any("random-0" in part for part in command)  # this student's SFT process gets a bad argument
        _launch_logged(command + ["--no-such-option"] if broken else command)
    store = MetadataStore(config.store_path)
    lines = []
    report = run_study(store, config, launch=launch, log=lines.append)
    failed = report.student("random:0")
    assert failed.status == "failed"
    assert "training failed" in failed.reason and "unrecognized arguments: --no-such-option" in failed.reason
    # the student after the failed one still ran
    assert report.student("random:1").status == "finished" and report.student(BASE).status == "finished"
    assert [line.split(":")[0] + ":" + line.split(":")[1] for line in lines if line.startswith("student random")
            and ("finished" in line or "failed" in line)] == ["student random:0", "student random:1"]
    assert report.ranking("g_vendi_q1", "out_of_distribution").reason.startswith("1 set(s) with a value")
    assert "failed: training failed" in sets_table(report)
    lines = []
    report = run_study(store, config, log=lines.append)  # the rerun tries the failed student again
    assert "students: 2 with a result, 1 to run (one after another)" in lines
    assert report.student("random:0").status == "finished" and report.trained == ["random:0"]


def test_a_student_that_cannot_start_fails_with_the_process_error(tmp_path, tiny_model_dir):
    config = build_config(tiny_values(tmp_path, tiny_model_dir))
    distill = study_distill(config).model_copy(update={"student": str(tmp_path / "no-model")})
    tasks = prepare(config.study).tasks
    job = StudentJob("span:1:1", [i.sample for i in tasks["in_distribution"][:2]], distill, str(tmp_path / "m"),
                     tasks, config.study.engine, 4, False)
    outcome = run_student(job)
    assert outcome.status == "failed" and "training failed" in outcome.reason and "no-model" in outcome.reason
    assert outcome.report is None  # nothing was evaluated


def test_rankings_pair_each_set_with_its_own_student_and_skip_missing_values():
    from scipy.stats import spearmanr

    from prismatic_assets.pipeline.study import rankings
    from prismatic_assets.store.study_tables import AccuracyRecord, MeasureRow, StudentRecord

    names = ["s1", "s2", "s3", "s4", "s5"]
    g = {"s1": 3.0, "s2": 1.0, "s3": 4.0, "s4": 2.0, "s5": 5.0}
    ood = {"s1": 0.2, "s2": 0.1, "s3": 0.5, "s4": 0.3, "s5": 0.4}
    idd = {"s1": 0.9, "s2": 0.8, "s3": 0.7, "s4": 0.6, "s5": 0.5}
    measures = [MeasureRow(n, "g_vendi_q1", g[n], 10) for n in names]
    measures += [MeasureRow(n, "distinct_1", None if n == "s3" else g[n], 10, "undefined") for n in names]

    def student(name, status="finished"):
        acc = [AccuracyRecord("out_of_distribution", 10, 0, ood.get(name, 0.99), 0, 1),
               AccuracyRecord("in_distribution", 10, 0, idd.get(name, 0.99), 0, 1)]
        return StudentRecord(name, "k", status, {}, accuracy=acc if status == "finished" else [])
    # listed out of order, with the base model and a failed set that must not count
    students = [student(n) for n in reversed(names)] + [student(BASE), student("s6", "failed")]
    config = build_config({"study": {"bootstrap": 300}})
    rows = {(r.measure, r.split): r for r in rankings(measures, students, config.study)}
    assert rows[("g_vendi_q1", "out_of_distribution")].rho == pytest.approx(
        spearmanr([g[n] for n in names], [ood[n] for n in names]).statistic)
    # by hand: g ranks the sets 3, 1, 4, 2, 5; ID accuracy ranks them 5, 4, 3, 2, 1; d^2 = 4+9+1+0+16 = 30;
    # rho = 1 - 6*30 / (5*24) = -0.5
    assert rows[("g_vendi_q1", "in_distribution")].rho == pytest.approx(-0.5)
    kept = [n for n in names if n != "s3"]  # s3 has no distinct_1 value: left out of that measure only
    r = rows[("distinct_1", "out_of_distribution")]
    assert r.n_sets == 4 and r.rho == pytest.approx(
        spearmanr([g[n] for n in kept], [ood[n] for n in kept]).statistic)
    assert rows[("g_vendi_q1", "out_of_distribution")].n_sets == 5
    assert rows[("family_level_entropy", "out_of_distribution")].reason.startswith("0 set(s) with a value")


def test_a_pool_too_small_is_refused_before_any_gradient_naming_the_setting():
    from prismatic_assets.core.study_sets import PoolTooSmall
    from prismatic_assets.pipeline.study import draw_labels

    config = build_config({"study": {"families": ["basic_arithmetic", "gcd"], "levels": [0], "pool_size": 20,
                                     "designs": ["span:1:1", "span:2:1", "random:0"], "set_size": 8,
                                     "eval_per_family": 2}})
    prepared = prepare(config.study)
    with pytest.raises(PoolTooSmall, match=r"study.pool=procedural: design '\S+' needs \d+ .* raise study.pool_size "
                                           r"\(now 20\), or lower study.set_size \(now 8\)"):
        draw_labels(prepared.pool, config.study)


def test_measures_that_cannot_be_computed_carry_their_reason():
    import numpy as np

    from prismatic_assets.core.samples import Sample
    from prismatic_assets.pipeline.baselines import HiddenVectors
    from prismatic_assets.pipeline.study import set_measures

    members = [Sample("a", "one", "two"), Sample("b", "three", "four")]  # one-word texts: no 3-word sequence
    vectors = np.array([[1.0, 0.0]], dtype=np.float32)  # only one member has a gradient vector
    hidden = HiddenVectors("h", 2, ["a"], np.array([[0.0, 1.0]], dtype=np.float32), {"b": "zero hidden state"})
    rows = {r.measure: r for r in set_measures("s", members, vectors, {"b": "non-finite gradient"}, "g", hidden)}
    for m in ("g_vendi_q1", "g_vendi_q2", "g_vendi_qinf"):
        assert rows[m].value is None and "1 member(s) with a valid gradient vector" in rows[m].reason
        assert "non-finite gradient" in rows[m].reason
    assert rows["embedding_vendi"].value is None and "at least 2" in rows["embedding_vendi"].reason
    assert rows["distinct_1"].value == pytest.approx(1.0)  # 4 distinct words of 4 ("one two", "three four")
    assert rows["family_level_entropy"].value is None and "family" in rows["family_level_entropy"].reason


def test_a_pool_file_keeps_rows_whose_response_states_their_answer(tmp_path):
    import json as jsonlib

    from prismatic_assets.pipeline.study import draw_labels

    rows = []
    for i in range(30):
        category = ["algebra", "geometry"][i % 2]
        rows.append({"prompt": f"Problem {i}: what is {i} + {i}?", "response": f"It is \\boxed{{{2 * i}}}.",
                     "answer": str(2 * i), "category": category})
    rows.append({"prompt": "Problem x: 2 + 2?", "response": "It is \\boxed{5}.", "answer": "4", "category": "algebra"})
    rows.append({"prompt": "Problem y: 3 + 3?", "response": "Six, surely.", "answer": "6", "category": "algebra"})
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(jsonlib.dumps(r) for r in rows) + "\n")
    config = build_config({"study": {"pool": str(path), "fields": "category=category",
                                     "designs": ["span:1:1", "span:2:1", "random:0"],
                                     "set_size": 6, "eval_per_family": 3, "ood_families": ["chain_sum"]}})
    prepared = prepare(config.study)
    assert prepared.pool.rejected == {"response_disagrees_with_answer": 1, "response_states_no_answer": 1}
    held = prepared.tasks["in_distribution"]
    assert sorted(s.category for s in held) == ["algebra"] * 3 + ["geometry"] * 3  # per category
    assert len(prepared.pool.samples) == 30 - 6
    assert not {s.sample_id for s in held} & {s.sample_id for s in prepared.pool.samples}
    sets = {d.name: d for d in draw_labels(prepared.pool, config.study)}
    families = {name: {prepared.pool.samples[i].category for i in d.members} for name, d in sets.items()}
    assert len(families["span:1:1"]) == 1 and families["span:2:1"] == {"algebra", "geometry"}
    # Without a mapped category, span designs cannot draw by family.
    config = build_config({"study": {"pool": str(path), "designs": ["span:1:1", "random:0"], "set_size": 6,
                                     "eval_per_family": 3, "ood_families": ["chain_sum"]}})
    with pytest.raises(ValueError, match=r"draw by family, but 27 of 27 pool samples have no family"):
        draw_labels(prepare(config.study).pool, config.study)


def test_a_second_run_of_the_same_study_is_refused_while_one_runs(tmp_path, tiny_model_dir):
    from prismatic_assets.pipeline.study import STUDY_LOCK
    from prismatic_assets.store.store import StoreBusy

    config = build_config(tiny_values(tmp_path / "data", tiny_model_dir))
    store = MetadataStore(config.store_path)
    counts = row_counts(store)
    with store.exclusive(STUDY_LOCK, "a study run", study_id=study_id(config)):
        with pytest.raises(StoreBusy, match="a study run holds"):
            run_study(store, config)
    assert row_counts(store) == counts
