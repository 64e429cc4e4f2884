"""Distillation: the training set, the length checks, and the SFT process launch.

SFT runs in its own process tree, never inside the orchestrator: `sft_command` builds the
`accelerate launch` / `torchrun` / `python` command that starts `num_processes` copies of
`pipeline/sft_worker.py`, which train with `core.sft.train_sft` (bf16, gradient
checkpointing, FSDP or ZeRO-3 as configured). Rank 0 alone logs and saves. The Dagster
asset runs the command through Pipes; scripts can run it with `subprocess`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from prismatic_assets.infra.config import DistillConfig, EvaluationConfig
from prismatic_assets.core.samples import Sample
from prismatic_assets.pipeline.sft_worker import RESULT_FILE, read_training_set  # noqa: F401 (part of this API)
from prismatic_assets.store.store import MetadataStore

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
        raise ValueError(f"rounds={spec!r}: write 'all', 'none' or a comma list of round numbers such as '1,2'") from None
    missing = [r for r in wanted if r not in available]
    if missing:
        raise ValueError(f"rounds {missing} are not completed (completed: {available or 'none'}): run them first "
                         "(prismatic rounds N) or choose other rounds")
    return wanted


def training_samples(store: MetadataStore, seed_pool_ids: Sequence[str], rounds: Sequence[int]) -> list[Sample]:
    """The seed pool plus the accepted samples of `rounds`."""
    samples = store.load_samples(list(seed_pool_ids))
    if rounds:
        marks = ",".join("?" for _ in rounds)
        samples += store.load_samples(where=f"origin = 'synthetic' AND round IN ({marks})", params=list(rounds))
    return samples


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
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
            "--mixed_precision", mixed, "--dynamo_backend", "no"] + worker


def read_result(output_dir: Path) -> dict:
    """What rank 0 wrote after training (steps, loss history, final model folder)."""
    path = Path(output_dir) / RESULT_FILE
    if not path.is_file():
        raise RuntimeError(f"the SFT processes ended without writing {path}: see their log above")
    return json.loads(path.read_text())
