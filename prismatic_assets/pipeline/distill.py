"""Distillation: the training set, the length checks, the SFT process launch and its tracking.

`plan_training` turns the profile's `distill` block (with a run's overrides,
`distill_settings`) into a checked plan: lengths the student can hold, completed and current
rounds, the training set written where the SFT processes read it. `train_student` then runs
the training under one MLflow run (parameters, the training set's G-Vendi, the loss curve,
the registered student), ending it FAILED if anything raises.

SFT runs in its own process tree, never inside the orchestrator: `sft_command` builds the
`accelerate launch` / `torchrun` / `python` command that starts `num_processes` copies of
`pipeline/sft_worker.py`, which train with `core.sft.train_sft` (bf16, gradient
checkpointing, FSDP or ZeRO-3 as configured). Rank 0 alone logs and saves. Who runs the
command is the caller's `Launcher`: the Dagster asset goes through Pipes, scripts and tests
through `subprocess` (`run_command`). No Dagster here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from prismatic_assets.core.ids import digest
from prismatic_assets.core.samples import Sample
from prismatic_assets.core.tracking import Tracker
from prismatic_assets.infra.config import DistillConfig, EvaluationConfig
from prismatic_assets.pipeline.embedder import Embedder
from prismatic_assets.pipeline.embeddings import embed_samples, pool_vectors
from prismatic_assets.pipeline.scores import score_pool
from prismatic_assets.pipeline.sft_worker import RESULT_FILE, read_training_set  # noqa: F401 (part of this API)
from prismatic_assets.reporting import plots
from prismatic_assets.store.store import MetadataStore
from prismatic_assets.store.synthesis_tables import accepted_samples, completed_rounds, refresh_staleness

WORKER_MODULE = "prismatic_assets.pipeline.sft_worker"


def parse_rounds(spec: str, available: list[int]) -> list[int]:
    """'all' -> every completed round, 'none' -> [], '1,3' -> [1, 3] (each must be completed)."""
    spec = spec.strip().lower()
    if spec == "all":
        return list(available)
    if spec in ("none", ""):
        return []
    try:
        wanted = sorted({int(part) for part in spec.split(",")})
    except ValueError:
        raise ValueError(f"rounds={spec!r}: write 'all', 'none' or a comma list of round numbers "
                         "such as '1,2'") from None
    missing = [r for r in wanted if r not in available]
    if missing:
        raise ValueError(f"rounds {missing} are not completed (completed: {available or 'none'}): run them first "
                         "(prismatic rounds N) or choose other rounds")
    return wanted


def training_samples(store: MetadataStore, seed_pool_ids: Sequence[str], rounds: Sequence[int]) -> list[Sample]:
    """The seed pool plus the accepted samples of `rounds`."""
    return store.load_samples(list(seed_pool_ids)) + accepted_samples(store, rounds)


# -- lengths -------------------------------------------------------------------------------
def model_context_length(model_ref: str) -> int | None:
    """The model's context (max_position_embeddings), read from its config, or None if unknown."""
    from transformers import AutoConfig

    from prismatic_assets.core.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(model_ref))
    return getattr(config, "max_position_embeddings", None)


def check_lengths(distill: DistillConfig, evaluation: EvaluationConfig, context: int | None = None) -> None:
    """Refuse, before anything trains, lengths the student cannot hold.

    context: the student's context length (default: `distill.max_context`, else its config)."""
    context = context or distill.max_context or model_context_length(distill.student)
    if context is None:
        return
    problems = []
    if distill.sft.max_length > context:
        problems.append(f"distill.sft.max_length={distill.sft.max_length}")
    engine_len = evaluation.engine.max_model_len
    if engine_len is not None and engine_len > context:
        problems.append(f"evaluation.engine.max_model_len={engine_len}")
    if evaluation.max_tokens >= (engine_len or context):
        problems.append(f"evaluation.max_tokens={evaluation.max_tokens} (leaves no room for the prompt within "
                        f"{engine_len or context})")
    if problems:
        raise ValueError(f"the student {distill.student} has a context of {context} tokens, but "
                         f"{' and '.join(problems)}: lower them to at most {context} in the profile")


# -- data handoff ----------------------------------------------------------------------------
def write_training_set(samples: Sequence[Sample], path: Path) -> Path:
    """Write the samples as JSON Lines (atomically) for the SFT processes to read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        for s in samples:
            f.write(json.dumps(asdict(s), default=str) + "\n")
    os.replace(tmp, path)
    return path


def sft_command(distill: DistillConfig, data: Path, output_dir: Path) -> list[str]:
    """The command that trains the student: `distill.num_processes` worker processes."""
    worker = ["-m", WORKER_MODULE, "--student", distill.student, "--data", str(data), "--output-dir",
              str(output_dir), "--settings", json.dumps(asdict(distill.sft))]
    n = distill.num_processes
    if distill.launcher == "python":
        if n != 1:
            raise ValueError(f"distill.launcher=python runs one process, but num_processes={n}: "
                             "use launcher: accelerate or torchrun")
        return [sys.executable] + worker
    if distill.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] + worker
    mixed = "bf16" if distill.sft.bf16 else "no"
    # Without --multi_gpu, accelerate turns --num_processes N into one plain process when it
    # sees fewer than 2 GPUs; with it, N ranks start on any machine (gloo on CPUs).
    several = ["--multi_gpu"] if n > 1 else []
    return [sys.executable, "-m", "accelerate.commands.launch", *several, "--num_processes", str(n),
            "--num_machines", "1", "--mixed_precision", mixed, "--dynamo_backend", "no"] + worker


def read_result(output_dir: Path) -> dict:
    """What rank 0 wrote after training (steps, loss history, final model folder)."""
    path = Path(output_dir) / RESULT_FILE
    if not path.is_file():
        raise RuntimeError(f"the SFT processes ended without writing {path}: see their log above")
    return json.loads(path.read_text())


# -- the plan ------------------------------------------------------------------------------
class StaleRoundsError(RuntimeError):
    """The rounds to train on were judged against a pool that no longer exists: re-run them first."""


def distill_settings(distill: DistillConfig, *, max_steps: int | None = None,
                     learning_rate: float | None = None) -> DistillConfig:
    """The profile's `distill` block with a run's SFT overrides (None: the profile's value)."""
    sft = distill.sft
    if max_steps is not None:
        sft = dataclasses.replace(sft, max_steps=max_steps)
    if learning_rate is not None:
        sft = dataclasses.replace(sft, learning_rate=learning_rate)
    return distill.model_copy(update={"sft": sft})


@dataclass(frozen=True)
class TrainingPlan:
    """What one distillation trains on and where it writes."""

    settings: DistillConfig
    rounds: list[int]
    samples: list[Sample]
    output_dir: Path  # models/distilled-<key of student, samples and weight-changing settings>
    data: Path  # the training set, JSON Lines

    @property
    def n_synthetic(self) -> int:
        return sum(1 for s in self.samples if s.sample_id.startswith("syn:"))


def plan_training(store: MetadataStore, seed_pool_ids: Sequence[str], distill: DistillConfig,
                  evaluation: EvaluationConfig, data_path: Path, rounds: str | None = None) -> TrainingPlan:
    """Check lengths and rounds, gather the training set (seed pool + accepted samples of the
    rounds) and write it for the SFT processes. `rounds`: the run's choice, else `distill.rounds`.

    Raises ValueError for lengths the student cannot hold or rounds not completed, and
    `StaleRoundsError` for rounds built on a pool that is gone."""
    check_lengths(distill, evaluation)
    chosen = parse_rounds(rounds or distill.rounds, completed_rounds(store))
    stale = {r: why for r, why in refresh_staleness(store).items() if r in chosen}
    if stale:  # their diversity filter judged against a pool that is gone
        raise StaleRoundsError(f"distillation would train on stale round(s) {sorted(stale)}: {stale[min(stale)]}")
    samples = training_samples(store, seed_pool_ids, chosen)
    key = digest({"student": distill.student, "ids": [s.sample_id for s in samples],
                  "sft": distill.sft.resume_relevant()})
    output_dir = Path(data_path) / "models" / f"distilled-{key}"
    return TrainingPlan(distill, chosen, samples, output_dir, write_training_set(samples, output_dir / "train.jsonl"))


def training_g_vendi(store: MetadataStore, samples: Sequence[Sample], embedder: Embedder, q: float,
                     run_id: str | None = None) -> float:
    """G-Vendi of the training set under the pool's proxy and projection (vectors from the cache)."""
    embed_samples(samples, embedder, store, run_id)
    vectors = pool_vectors(store, samples, embedder.key, embedder.dim)
    return score_pool(store, vectors, q, embedder.key, scope="distill:train", run_id=run_id).score


# -- training under one MLflow run ---------------------------------------------------------
#: Runs the SFT command (`sft_command`) to its end; returns what the processes reported.
Launcher = Callable[[list[str]], Mapping[str, Any]]


def run_command(command: list[str]) -> Mapping[str, Any]:
    """A `Launcher` for scripts and tests: the command as a subprocess; raises if it fails."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the SFT processes exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return {}


@dataclass(frozen=True)
class StudentResult:
    """A trained and registered student, with what the run logged."""

    mlflow_run_id: str
    registered_name: str
    version: str
    model_dir: str
    steps: int
    world_size: int
    resumed_from: str | None
    train_seconds: float
    loss_history: list[tuple[int, float]]
    loss_png: bytes
    reported: Mapping[str, Any] = field(default_factory=dict)  # what rank 0 reported to the launcher

    @property
    def final_loss(self) -> float:
        return self.loss_history[-1][1] if self.loss_history else float("nan")


def train_student(plan: TrainingPlan, *, tracker: Tracker, g_vendi: float, launch: Launcher,
                  dagster_run_id: str | None = None, log: Callable[[str], None] = lambda _: None) -> StudentResult:
    """Train the student of `plan` in its own processes and register it, under one MLflow run
    (ended FAILED when anything raises)."""
    ds = plan.settings
    tags = {"dagster_run_id": dagster_run_id or "", "stage": "distillation"}
    with tracker.run("distillation", tags=tags) as run_id:
        tracker.log_params(run_id, {"student": ds.student, "rounds": ",".join(map(str, plan.rounds)) or "none",
                                    "n_train": len(plan.samples), "launcher": ds.launcher,
                                    "num_processes": ds.num_processes, **ds.sft.resume_relevant()})
        tracker.log_metrics(run_id, {"train/g_vendi": g_vendi, "train/samples": len(plan.samples),
                                     "train/synthetic": plan.n_synthetic})
        command = sft_command(ds, plan.data, plan.output_dir)
        log(f"launching SFT: {' '.join(command[:8])} ...")
        reported = launch(command)
        result = read_result(plan.output_dir)
        history = [(int(s), float(v)) for s, v in result["loss_history"]]
        tracker.log_metric_history(run_id, "train/loss", history)
        loss_png = plots.series_png([s for s, _ in history], {"loss": [v for _, v in history]}, "step",
                                    "training loss", "SFT loss")
        png_path = plan.output_dir / "loss.png"
        png_path.write_bytes(loss_png)
        tracker.log_artifact(run_id, png_path, "plots")
        _, version = tracker.log_transformers_model(run_id, Path(result["final_model_dir"]), ds.registered_name,
                                                    tags={"dagster_run_id": dagster_run_id or "", "g_vendi": g_vendi})
    return StudentResult(mlflow_run_id=run_id, registered_name=ds.registered_name, version=version,
                         model_dir=result["final_model_dir"], steps=int(result["steps"]),
                         world_size=int(result["world_size"]), resumed_from=result["resumed_from"],
                         train_seconds=float(result["seconds"]), loss_history=history, loss_png=loss_png,
                         reported=dict(reported))
