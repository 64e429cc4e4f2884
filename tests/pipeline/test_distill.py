"""Distillation without Dagster: the plan, the SFT launch (one process vs two gloo processes), the length
checks, and training under one MLflow run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from prismatic_assets.core.models import PACKAGED_MODEL, resolve_model
from prismatic_assets.core.samples import Sample
from prismatic_assets.core.tracking import Tracker
from prismatic_assets.infra.config import build_config
from prismatic_assets.pipeline.distill import (
    StaleRoundsError,
    check_lengths,
    distill_settings,
    plan_training,
    read_result,
    read_training_set,
    run_command,
    sft_command,
    train_student,
    write_training_set,
)
from prismatic_assets.store.store import MetadataStore


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory) -> Path:
    tok = AutoTokenizer.from_pretrained(resolve_model(PACKAGED_MODEL))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("student")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _samples(n: int) -> list[Sample]:
    return [Sample(sample_id=f"t:{i}", prompt=f"What is {i} plus {i * 3 + 1}?",
                   response=f"{i} + {i * 3 + 1} = {4 * i + 1}. The answer is \\boxed{{{4 * i + 1}}}.")
            for i in range(n)]


def _distill(student: Path, launcher: str, processes: int, batch: int):
    return build_config({"distill": {"student": str(student), "launcher": launcher, "num_processes": processes,
                                     "sft": {"max_steps": 4, "learning_rate": 1e-3, "per_device_batch_size": batch,
                                             "warmup_ratio": 0.0, "max_length": 128, "save_steps": 100,
                                             "logging_steps": 1}}}).distill


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tiny_student, tmp_path):
    data = write_training_set(_samples(16), tmp_path / "train.jsonl")
    assert [s.sample_id for s in read_training_set(data)] == [f"t:{i}" for i in range(16)]
    curves, finals = {}, {}
    for name, launcher, n, batch in (("one", "python", 1, 4), ("two", "torchrun", 2, 2)):
        command = sft_command(_distill(tiny_student, launcher, n, batch), data, tmp_path / name)
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        result = read_result(tmp_path / name)
        assert result["world_size"] == n and result["steps"] == 4
        curves[name] = [loss for _, loss in result["loss_history"]]
        finals[name] = Path(result["final_model_dir"])
    assert len(curves["one"]) == 4
    assert curves["two"] == pytest.approx(curves["one"], rel=1e-3)
    assert curves["one"][-1] < curves["one"][0]  # it learned something
    # Rank 0 alone saved: one final model, and it equals the one-process result.
    from safetensors.torch import load_file

    a, b = (load_file(str(finals[k] / "model.safetensors")) for k in ("one", "two"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3


def test_launch_commands():
    one = _distill(Path("m"), "python", 1, 2)
    assert one and sft_command(one, Path("d"), Path("o"))[1:3] == ["-m", "prismatic_assets.pipeline.sft_worker"]
    torchrun = sft_command(_distill(Path("m"), "torchrun", 8, 2), Path("d"), Path("o"))
    assert "--nproc_per_node=8" in torchrun
    accelerate = sft_command(_distill(Path("m"), "accelerate", 8, 2), Path("d"), Path("o"))
    assert accelerate[2] == "accelerate.commands.launch" and accelerate[accelerate.index("--num_processes") + 1] == "8"
    with pytest.raises(ValueError, match="launcher: accelerate or torchrun"):
        sft_command(_distill(Path("m"), "python", 2, 2), Path("d"), Path("o"))


@pytest.mark.parametrize("overrides, match", [
    ({"distill": {"sft": {"max_length": 8192}}}, r"context of 4096 tokens, but distill.sft.max_length=8192"),
    ({"evaluation": {"engine": {"max_model_len": 20480}}}, r"evaluation.engine.max_model_len=20480"),
    ({"evaluation": {"max_tokens": 4096, "engine": {"max_model_len": 4096}}}, r"evaluation.max_tokens=4096"),
])
def test_lengths_beyond_the_student_context_are_refused(overrides, match):
    config = build_config(overrides)
    with pytest.raises(ValueError, match=match):
        check_lengths(config.distill, config.evaluation, context=4096)


def test_lengths_read_from_the_student_config(tiny_student):
    config = build_config({"distill": {"student": str(tiny_student), "sft": {"max_length": 1024}}})
    with pytest.raises(ValueError, match="context of 512 tokens"):
        check_lengths(config.distill, config.evaluation)
    ok = build_config({"distill": {"student": str(tiny_student), "sft": {"max_length": 256}},
                       "evaluation": {"max_tokens": 128, "engine": {"max_model_len": 512}}})
    check_lengths(ok.distill, ok.evaluation)


def _seeded(tmp_path: Path, n: int) -> tuple[MetadataStore, list[str]]:
    store = MetadataStore(tmp_path / "m.duckdb")
    samples = _samples(n)
    store.replace_samples(source="unit", origin="seed", samples=samples,
                          splits={s.sample_id: "pool" for s in samples}, rejections=[], run_id="r")
    return store, [s.sample_id for s in samples]


def _profile(student: Path):
    return build_config({"distill": {"student": str(student), "launcher": "python", "rounds": "none",
                                     "registered_name": "unit-student",
                                     "sft": {"max_steps": 5, "learning_rate": 1e-3, "per_device_batch_size": 2,
                                             "warmup_ratio": 0.0, "max_length": 128, "save_steps": 100}},
                         "evaluation": {"engine": {"max_model_len": 256}, "max_tokens": 8}})


def test_run_overrides_change_only_what_they_name():
    base = build_config({}).distill
    changed = distill_settings(base, max_steps=7)
    assert changed.sft.max_steps == 7 and changed.sft.learning_rate == base.sft.learning_rate
    assert distill_settings(base, learning_rate=3e-4).sft.learning_rate == 3e-4
    assert distill_settings(base) == base


def test_plan_refuses_rounds_that_are_not_complete(tiny_student, tmp_path):
    store, ids = _seeded(tmp_path, 4)
    settings = _profile(tiny_student)
    with pytest.raises(ValueError, match=r"rounds \[1\] are not completed"):
        plan_training(store, ids, settings.distill, settings.evaluation, tmp_path / "data", rounds="1")
    assert issubclass(StaleRoundsError, RuntimeError)


def test_training_runs_under_one_mlflow_run_and_registers_the_student(tiny_student, tmp_path):
    store, ids = _seeded(tmp_path, 8)
    settings = _profile(tiny_student)
    plan = plan_training(store, ids, distill_settings(settings.distill, max_steps=2), settings.evaluation,
                         tmp_path / "data")
    assert plan.rounds == [] and [s.sample_id for s in read_training_set(plan.data)] == ids
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    student = train_student(plan, tracker=tracker, g_vendi=3.5, launch=run_command, dagster_run_id="d1")
    run = tracker.client.get_run(student.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["n_train"] == "8" and run.data.params["max_steps"] == "2"
    assert run.data.metrics["train/g_vendi"] == 3.5 and run.data.tags["dagster_run_id"] == "d1"
    assert student.steps == 2 and [s for s, _ in student.loss_history] == [1, 2]
    assert len(tracker.client.get_metric_history(student.mlflow_run_id, "train/loss")) == 2
    assert student.version == "1" and (Path(student.model_dir) / "config.json").is_file()


def test_a_failing_training_ends_its_mlflow_run_failed(tiny_student, tmp_path):
    store, ids = _seeded(tmp_path, 4)
    settings = _profile(tiny_student)
    plan = plan_training(store, ids, settings.distill, settings.evaluation, tmp_path / "data")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")

    def out_of_memory(command: list[str]) -> dict:
        raise RuntimeError("the SFT processes exited with 137")

    with pytest.raises(RuntimeError, match="137"):
        train_student(plan, tracker=tracker, g_vendi=1.0, launch=out_of_memory)
    runs = tracker.client.search_runs(tracker.experiment_id)
    assert [(r.info.run_name, r.info.status) for r in runs] == [("distillation", "FAILED")]
