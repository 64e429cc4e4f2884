"""MLflow tracking against a real SQLite-backed store in a temporary folder.

Checks what lands in the store (runs, params, metrics, artifacts, the logged and registered
student), that no global active run or global tracking URI is used, and that two processes
can log to one fresh store at the same time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from prismatic_assets.core.models import PACKAGED_MODEL, resolve_model  # noqa: E402
from prismatic_assets.core.tracking import (  # noqa: E402
    Tracker,
    default_artifact_root,
    default_tracking_uri,
    flatten_params,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _quiet_mlflow(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow-store")


@pytest.fixture(scope="module")
def tracker(store) -> Tracker:
    return Tracker(f"sqlite:///{store / 'mlflow.db'}", experiment="prismatic-test")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    tok = AutoTokenizer.from_pretrained(resolve_model(PACKAGED_MODEL))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-student")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_default_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert default_artifact_root(tmp_path) == (tmp_path.resolve() / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert default_tracking_uri(tmp_path) == "http://mlflow.internal:5000"


def test_flatten_params():
    assert flatten_params({"a": 1, "sft": {"lr": 2e-5, "lora": {"r": 8}}, "x": None}) == {
        "a": "1", "sft.lr": "2e-05", "sft.lora.r": "8", "x": "None"}
    assert len(flatten_params({"long": "y" * 10_000})["long"]) == 6000


def test_run_params_metrics_and_artifacts(tracker, store, tmp_path):
    run_id = tracker.start_run("distill", tags={"stage": "sft", "round": 2})
    tracker.log_params(run_id, {"model": "smollm2", "sft": {"max_steps": 30}})
    tracker.log_params(run_id, {f"p{i}": i for i in range(150)})  # more than one MLflow batch
    tracker.log_metrics(run_id, {"accuracy/gsm_symbolic": 0.25, "g_vendi": 12.5})
    tracker.log_metrics(run_id, {"g_vendi": 13.0}, step=1)
    tracker.log_metric_history(run_id, "train/loss", [(s, 2.0 / s) for s in range(1, 1201)])

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [3, 2, 1])
    tracker.log_figure(run_id, fig, "plots/loss.png")
    plt.close(fig)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"ok": True}))
    tracker.log_artifact(run_id, report, "eval")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    tracker.log_artifact(run_id, folder, "bundle")
    tracker.log_dict(run_id, {"records": [1, 2]}, "eval/records.json")
    tracker.set_tags(run_id, {"dagster_run": "abc", "round": 3})
    tracker.end_run(run_id)

    client = MlflowClient(tracker.tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "distill"
    assert run.info.experiment_id == tracker.experiment_id
    assert run.data.tags["stage"] == "sft" and run.data.tags["round"] == "3"  # set_tags overwrote it
    assert run.data.tags["dagster_run"] == "abc"
    assert run.data.params["sft.max_steps"] == "30" and run.data.params["p149"] == "149"
    assert run.data.metrics["accuracy/gsm_symbolic"] == 0.25
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "g_vendi")] == [(0, 12.5), (1, 13.0)]
    history = client.get_metric_history(run_id, "train/loss")
    assert len(history) == 1200 and {m.step for m in history} == set(range(1, 1201))
    listed = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for d in ("plots", "eval", "bundle") for a in client.list_artifacts(run_id, d)}
    assert {"plots/loss.png", "eval/report.json", "eval/records.json", "bundle/a.txt"} <= listed
    # Artifacts live next to the database, not in the working directory.
    assert list((store / "mlartifacts" / "prismatic-test").rglob("loss.png"))
    assert mlflow.active_run() is None


def test_run_context_marks_failures(tracker):
    with pytest.raises(RuntimeError):
        with tracker.run("boom") as run_id:
            raise RuntimeError("training crashed")
    assert MlflowClient(tracker.tracking_uri).get_run(run_id).info.status == "FAILED"
    with tracker.run("fine") as ok_id:
        tracker.log_metrics(ok_id, {"x": 1.0})
    assert MlflowClient(tracker.tracking_uri).get_run(ok_id).info.status == "FINISHED"
    outcome = {"status": "running"}
    with tracker.run("recorded failure", end_status=lambda: "FAILED" if outcome["status"] == "failed"
                     else "FINISHED") as failed_id:
        outcome["status"] = "failed"  # decided inside the run, read when it ends
    assert MlflowClient(tracker.tracking_uri).get_run(failed_id).info.status == "FAILED"
    with pytest.raises(ValueError, match="status"):
        tracker.end_run(ok_id, "DONE")
    with pytest.raises(ValueError, match="infinite"):
        tracker.log_metrics(ok_id, {"bad": float("inf")})


def test_log_and_register_transformers_model(tracker, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow falls back to ./mlflow.db when something uses the global URI
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_id = tracker.start_run("distill")
    model_uri, version = tracker.log_transformers_model(run_id, tiny_model_dir, "prismatic-student",
                                                        tags={"g_vendi": 12.5})
    tracker.set_model_version_tags("prismatic-student", version, {"accuracy/gsm_symbolic": 0.3, "round": 2})
    tracker.end_run(run_id)
    assert version == "1" and model_uri.startswith("models:/m-")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert mlflow.active_run() is None

    client = MlflowClient(tracker.tracking_uri, registry_uri=tracker.tracking_uri)
    mv = client.get_model_version("prismatic-student", version)
    assert mv.run_id == run_id and mv.status == "READY"
    assert mv.tags == {"g_vendi": "12.5", "accuracy/gsm_symbolic": "0.3", "round": "2"}
    logged = client.get_logged_model(model_uri.removeprefix("models:/"))
    assert logged.source_run_id == run_id and str(logged.status) in ("READY", "LoggedModelStatus.READY")
    assert logged.tags["g_vendi"] == "12.5"
    assert [o.model_id for o in client.get_run(run_id).outputs.model_outputs] == [logged.model_id]

    # The version's source holds an MLflow model with the transformers flavour whose weights reload.
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path / "dl"),
                                                     tracking_uri=tracker.tracking_uri))
    mlmodel = (local / "MLmodel").read_text()
    assert "transformers:" in mlmodel and "python_function:" in mlmodel
    assert "llm/v1/chat" in mlmodel  # the default task gives a chat signature
    reloaded = LlamaForCausalLM.from_pretrained(local / "model")
    assert reloaded.config.hidden_size == 16
    assert logged.name == "model"

    # A second registration is version 2, with the other task and LoggedModel name.
    run2 = tracker.start_run("distill-2")
    uri2, version2 = tracker.log_transformers_model(run2, tiny_model_dir, "prismatic-student",
                                                    task="text-generation", name="student-r2")
    assert version2 == "2"
    assert client.get_logged_model(uri2.removeprefix("models:/")).name == "student-r2"
    source2 = client.get_model_version("prismatic-student", "2").source
    local2 = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{source2}/MLmodel",
                                                      dst_path=str(tmp_path / "dl2"),
                                                      tracking_uri=tracker.tracking_uri))
    text2 = local2.read_text()
    assert "task: text-generation" in text2 and "llm/v1/chat" not in text2
    assert tracker.run_url(run2) == f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs/{run2}"
    assert tracker.model_version_url("prismatic-student", 2).endswith("/#/models/prismatic-student/versions/2")


def test_registry_uri_sends_versions_to_another_registry(store, tiny_model_dir, tmp_path):
    uri = f"sqlite:///{store / 'mlflow.db'}"
    registry = f"sqlite:///{tmp_path / 'registry.db'}"
    tracker = Tracker(uri, experiment="prismatic-test", registry_uri=registry)
    run_id = tracker.start_run("elsewhere")
    _, version = tracker.log_transformers_model(run_id, tiny_model_dir, "registry-only-student")
    assert MlflowClient(uri, registry_uri=registry).get_model_version("registry-only-student", version).run_id == run_id
    assert not MlflowClient(uri, registry_uri=uri).search_registered_models("name = 'registry-only-student'")


def test_log_transformers_model_refuses_a_non_model_folder(tracker, tmp_path):
    run_id = tracker.start_run("bad")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        tracker.log_transformers_model(run_id, tmp_path, "x")


def test_constructor_options_change_where_things_go(store, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_UI_URL", raising=False)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    other = Tracker(uri, experiment="elsewhere", artifact_root=tmp_path / "art", ui_url="http://ui:8080/")
    run_id = other.start_run("r")
    other.log_dict(run_id, {"a": 1}, "x.json")
    assert (tmp_path / "art" / "elsewhere").is_dir()
    assert MlflowClient(uri).get_experiment(other.experiment_id).name == "elsewhere"
    assert other.run_url(run_id).startswith("http://ui:8080/#/experiments/")
    same = Tracker(uri, experiment="elsewhere")  # reopening finds the experiment
    assert same.experiment_id == other.experiment_id


_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from prismatic_assets.core.tracking import Tracker
    uri, name, model_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    tracker = Tracker(uri, experiment="concurrent")
    # Barrier: both workers start logging together, so their writes really overlap.
    Path(f"ready-{name}").touch()
    deadline = time.time() + 300
    while len(list(Path(".").glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    run_id = tracker.start_run(name)
    tracker.log_params(run_id, {"worker": name})
    for step in range(40):
        tracker.log_metrics(run_id, {"loss": 1.0 / (step + 1)}, step=step)
    tracker.log_metric_history(run_id, "curve", [(s, float(s)) for s in range(200)])
    _, version = tracker.log_transformers_model(run_id, model_dir, "shared-student")
    tracker.set_model_version_tags("shared-student", version, {"worker": name})
    tracker.end_run(run_id)
    print(run_id, version)
""")


def test_two_processes_log_to_one_fresh_store_at_once(tmp_path, tiny_model_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**__import__("os").environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, uri, f"w{i}", str(tiny_model_dir)], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    run_ids = [out.split()[0] for out, _ in results]
    versions = sorted(out.split()[1] for out, _ in results)
    assert versions == ["1", "2"]

    client = MlflowClient(uri, registry_uri=uri)
    for i, run_id in enumerate(run_ids):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["worker"] == f"w{i}"
        assert len(client.get_metric_history(run_id, "loss")) == 40
        assert len(client.get_metric_history(run_id, "curve")) == 200
    tags = {client.get_model_version("shared-student", v).tags["worker"] for v in versions}
    assert tags == {"w0", "w1"}
