"""Supervised fine-tuning (distillation) of a student model on synthesized samples, with TRL.

What it does: turns `Sample`s into a conversational prompt-completion dataset (user turn =
problem, assistant turn = solution), trains with TRL's `SFTTrainer` with the loss on the
assistant tokens only, checkpoints every `save_steps`, resumes from the last complete
checkpoint, and saves the final model and tokenizer atomically to ``output_dir/final``
(LoRA adapters are merged first, so `final` is a plain model folder that transformers and
vLLM load). What it does not: track anything in MLflow (see `tracking`), evaluate (see
`evaluation`), or loop over batches itself (the Trainer does).

Prompt masking. SmolLM2's ChatML template has no ``{% generation %}`` markers, and TRL 1.16
only patches templates it recognizes, so ``assistant_only_loss=True`` fails for it. We use
the prompt-completion route instead: TRL tokenizes ``prompt`` (with the generation prompt)
and ``prompt + completion``, and with ``completion_only_loss=True`` sets the label of every
token of the common prefix (system turn, user turn, ``<|im_start|>assistant\\n``) to -100.
This works for any chat template; `tests/core/test_sft.py` checks it token by token.

Checkpoints, the atomic publication of `final` and full-disk handling live in
`sft_checkpoints.py`; this module holds the settings, the data, the Trainer and the run.

Output layout::

    output_dir/
      prismatic_sft.json     what this run is (settings, base model, data digest): resume key
      checkpoint-10/ ...     Trainer checkpoints (weights, optimizer, scheduler, RNG, state)
      final/                 model + tokenizer + prismatic_sft.json (+ steps, sample counts),
                             written to a temp folder and renamed

Re-running a finished run (a re-materialization) trains nothing: `final` is kept, or
re-exported from the last checkpoint if a crash lost it.

Local profile (the defaults): SmolLM2-135M-Instruct, fp32, 10 steps of 2 samples, max 512
tokens (CHAMP samples average ~300 tokens), a checkpoint every 5 steps, only the newest
kept (a SmolLM2 checkpoint with optimizer state is ~1.6 GB; the Trainer deletes the older
one only after the newer is complete). Measured on 2 shared Zen 4 cores: one step at batch
4 x ~512 tokens costs ~65 CPU-seconds (~130 s wall on the loaded machine, ~35 s when the
two cores are free); about 40% of it is TRL's chunked LM-head loss, which avoids
materializing logits (a GPU memory win, a CPU time loss). So the default run takes about 2
minutes on two free cores. Keep ``bf16=False`` on CPU: bf16 autocast made the step many
times slower here (the vocabulary projection's bf16 matmuls), unlike on GPUs. Batches are
padding-free (``padding_free``): a step costs the sum of its samples' lengths, not batch x
the longest (`benchmarks/bench_sft.py` times both).

GPU profile (paper-scale student, e.g. Qwen2.5-Math-7B): set ``bf16=True``,
``gradient_checkpointing=True``, a per-device batch that fits (e.g. 4) and
``gradient_accumulation_steps`` so that devices x batch x accumulation is the global batch
you want (e.g. 8 GPUs x 4 x 4 = 128), ``max_length=16384`` for long reasoning traces, and
``learning_rate=1e-5``/``warmup_ratio=0.03`` or so. Multi-GPU is data parallel through
accelerate; `train_sft` runs unchanged in every process (the Trainer handles the rank)::

    accelerate launch --num_processes 8 --mixed_precision bf16 train_student.py   # or
    torchrun --nproc_per_node 8 train_student.py
    # train_student.py: load the samples, then train_sft(model, samples, out, settings)

Add ``--config_file`` with a DeepSpeed ZeRO-3 or FSDP accelerate config (TRL ships
examples in ``trl/accelerate_configs``) when the model and optimizer do not fit one GPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prismatic_assets.core.samples import Sample
from prismatic_assets.core.sft_checkpoints import (
    FINAL_DIR,
    RUN_INFO_FILE,
    SFTDiskFull,
    complete_checkpoints,
    disk_full,
    export_checkpoint,
    folder_mb,
    is_main_process,
    prepare_output_dir,
    read_json,
    remove_incomplete_checkpoints,
    save_final_atomic,
    write_json_atomic,
)

if TYPE_CHECKING:  # transformers loads in seconds: only the training run imports it
    from prismatic_assets.core.sft_callbacks import CallbackLike

__all__ = [
    "SFT_ALGORITHM_VERSION",
    "ProgressFn",
    "SFTResult",
    "SFTSettings",
    "build_sft_config",
    "build_trainer",
    "samples_to_dataset",
    "train_sft",
]

log = logging.getLogger(__name__)

#: Bump when data formatting or masking changes: it is part of the resume key.
SFT_ALGORITHM_VERSION = 1

#: A plain progress hook: called with (global step, training loss) at every logging step.
ProgressFn = Callable[[int, float], None]


#: How several training processes share the model: whole copies (DDP), FSDP, DeepSpeed ZeRO-3.
SHARDING_CHOICES = ("none", "fsdp", "zero3")


@dataclass(frozen=True)
class SFTSettings:
    """Training settings. Defaults are the local CPU profile (a few minutes for SmolLM2-135M).

    `max_steps` optimizer steps (the data is repeated as needed); the global batch is
    `per_device_batch_size` x `gradient_accumulation_steps` x number of processes.
    `max_length` truncates each tokenized sample at its end (samples whose prompt alone
    fills it are dropped by TRL: they have no response token left to learn from).
    `warmup_ratio` is the fraction of `max_steps` of linear warm-up before the
    `lr_scheduler_type` schedule. `bf16` trains with bf16 autocast (CPU or GPU).
    `seed` seeds initialisation of new weights (LoRA), dropout and the data order.
    `save_steps` / `save_total_limit`: checkpoint every n steps, keep the newest n.
    `lora`: train a LoRA adapter (`lora_r`, `lora_alpha`, `lora_dropout` on
    `lora_target_modules`) instead of all weights; it is merged into `final`.
    `sharding`: with several processes, "none" (DDP: a whole copy each), "fsdp" or "zero3"
    (parameters, gradients and optimizer state sharded: a 7B student on 8 GPUs).
    `padding_free`: concatenate a batch's samples into one row (attention kept within each
    sample through its position ids) instead of padding them to the longest: the same batches
    and the same loss, without the compute spent on padding (`benchmarks/bench_sft.py`).
    """

    max_steps: int = 10
    learning_rate: float = 2e-5
    per_device_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    lr_scheduler_type: str = "cosine"
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 0
    save_steps: int = 5
    save_total_limit: int | None = 1
    logging_steps: int = 1
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    sharding: str = "none"
    padding_free: bool = True

    def __post_init__(self) -> None:
        if self.sharding not in SHARDING_CHOICES:
            raise ValueError(f"SFTSettings.sharding={self.sharding!r}: choose one of {SHARDING_CHOICES} (none: every "
                             "process holds the whole model, data parallel; fsdp / zero3 shard it across processes)")
        positive = ("max_steps", "per_device_batch_size", "gradient_accumulation_steps", "max_length",
                    "save_steps", "logging_steps", "lora_r", "lora_alpha")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SFTSettings.{name}={value!r}: must be an integer >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"SFTSettings.learning_rate={self.learning_rate}: must be > 0 (e.g. 2e-5)")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"SFTSettings.warmup_ratio={self.warmup_ratio}: must be in [0, 1) (e.g. 0.1)")
        if self.weight_decay < 0:
            raise ValueError(f"SFTSettings.weight_decay={self.weight_decay}: must be >= 0")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"SFTSettings.lora_dropout={self.lora_dropout}: must be in [0, 1)")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(f"SFTSettings.save_total_limit={self.save_total_limit}: use None to keep all, or >= 1")
        if self.lora and not self.lora_target_modules:
            raise ValueError("SFTSettings.lora_target_modules is empty: name the modules to adapt, "
                             "e.g. ('q_proj', 'v_proj')")
        # Frozen dataclass: normalise a list given by a config system to a tuple.
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))

    def resume_relevant(self) -> dict[str, Any]:
        """The settings that change the trained weights (checkpoint/log cadence does not)."""
        d = asdict(self)
        # How batches are laid out does not change what is learned: a padded run resumes padding-free.
        for name in ("save_steps", "save_total_limit", "logging_steps", "sharding", "padding_free"):
            d.pop(name)
        d["lora_target_modules"] = list(self.lora_target_modules)
        return d


@dataclass(frozen=True)
class SFTResult:
    """What a training call produced.

    `loss_history`: (global step, training loss) at every logging step, including the
    steps done before a resume (restored from the checkpoint's trainer state).
    `steps`: global step reached. `train_samples`: samples in the training set after TRL's
    preparation; `dropped_samples` were removed because truncation left no response token.
    `resumed_from`: the checkpoint folder training resumed from, else None.
    `seconds`: wall time of this call's training (excluding loading); 0.0 when the run had
    already finished and nothing was trained.
    """

    final_model_dir: Path
    loss_history: list[tuple[int, float]]
    steps: int
    train_samples: int
    dropped_samples: int
    resumed_from: Path | None
    seconds: float
    run_key: str


# ---------------------------------------------------------------------------- data


def samples_to_dataset(samples: Sequence[Sample]):
    """A conversational prompt-completion `datasets.Dataset`: user = prompt, assistant = response."""
    from datasets import Dataset

    if not samples:
        raise ValueError("no training samples: train_sft needs at least one Sample with a response")
    rows = []
    for s in samples:
        if not s.prompt.strip() or not s.response.strip():
            raise ValueError(
                f"sample {s.sample_id!r} ({s.source_ref or s.source}): empty prompt or response; "
                "filter such samples out before training"
            )
        rows.append({
            "prompt": [{"role": "user", "content": s.prompt}],
            "completion": [{"role": "assistant", "content": s.response}],
        })
    return Dataset.from_list(rows)


def _data_digest(samples: Sequence[Sample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(s.sample_id.encode())
        h.update(b"\0")
        h.update(s.content_hash.encode())
        h.update(b"\0")
    return h.hexdigest()


def _run_info(model_path: str, samples: Sequence[Sample], settings: SFTSettings) -> dict[str, Any]:
    info = {
        "algorithm_version": SFT_ALGORITHM_VERSION,
        "base_model": model_path,
        "data_digest": _data_digest(samples),
        "num_samples": len(samples),
        "settings": settings.resume_relevant(),
    }
    info["run_key"] = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]
    return info


# ---------------------------------------------------------------------------- config


def build_sft_config(settings: SFTSettings, output_dir: Path):
    """The `trl.SFTConfig` for `settings` (every TRL default we rely on is set explicitly)."""
    from trl import SFTConfig

    # FSDP checkpoints activations through its own setting.
    checkpointing: dict[str, Any] = ({} if settings.sharding == "fsdp"
                                     else {"gradient_checkpointing": settings.gradient_checkpointing})
    return SFTConfig(
        output_dir=str(output_dir),
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.per_device_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_length=settings.max_length,
        warmup_steps=settings.warmup_ratio,  # transformers 5: a float < 1 is a ratio of max_steps
        weight_decay=settings.weight_decay,
        lr_scheduler_type=settings.lr_scheduler_type,
        bf16=settings.bf16,
        fp16=False,
        # transformers refuses bf16 without a GPU unless told to train on the CPU.
        use_cpu=not _accelerator_available(),
        **checkpointing,
        seed=settings.seed,
        data_seed=settings.seed,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        logging_strategy="steps",
        logging_steps=settings.logging_steps,
        # Loss on the completion (assistant turn) only: see the module docstring.
        completion_only_loss=True,
        assistant_only_loss=False,
        packing=False,
        # Never let transformers start an MLflow/W&B run behind our back (tracking.py does it).
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataset_num_proc=None,
        **_sharding_args(settings),
    )


def _sharding_args(settings: SFTSettings) -> dict[str, Any]:
    """Trainer arguments for FSDP or DeepSpeed ZeRO-3 (the launcher starts the processes)."""
    if settings.sharding == "fsdp":
        # Activation checkpointing inside FSDP replaces the Trainer's own (which FSDP forbids).
        return {"fsdp": "full_shard auto_wrap",
                "fsdp_config": {"activation_checkpointing": settings.gradient_checkpointing,
                                "use_orig_params": True, "state_dict_type": "FULL_STATE_DICT"}}
    if settings.sharding == "zero3":
        return {"deepspeed": {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
                              "bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto",
                              "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
                              "gradient_clipping": "auto"}}
    return {}


def _accelerator_available() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return bool(accelerator.is_available())
    return torch.cuda.is_available()  # pragma: no cover - torch < 2.6


def _peft_config(settings: SFTSettings):
    if not settings.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.lora_target_modules),
        task_type="CAUSAL_LM",
    )


def _loss_history(log_history: Sequence[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(int(e["step"]), float(e["loss"])) for e in log_history if "loss" in e]


def _finished_run(checkpoint: Path, output_dir: Path, info: dict[str, Any],
                  settings: SFTSettings, num_samples: int) -> SFTResult | None:
    """The result of a run whose last checkpoint already reached `max_steps`, else None.

    Resuming such a checkpoint would make the Trainer take one more step (transformers
    5.19), so a finished run is not resumed: `final` is kept when it matches, or exported
    from the checkpoint when it is missing (a crash between the last checkpoint and `final`).
    """
    state = read_json(checkpoint / "trainer_state.json")
    steps = int(state.get("global_step", 0))
    if steps < settings.max_steps:
        return None
    final_info = read_json(output_dir / FINAL_DIR / RUN_INFO_FILE)
    if final_info.get("run_key") == info["run_key"] and final_info.get("steps") == steps \
            and (output_dir / FINAL_DIR / "config.json").is_file():
        summary = final_info
    else:
        if not is_main_process():
            raise RuntimeError(f"{output_dir}: the finished run has no final model; export it in one process "
                               "(run train_sft once without a distributed launcher)")
        summary = {**read_json(output_dir / RUN_INFO_FILE), **info, "steps": steps}
        summary.setdefault("train_samples", num_samples)
        summary.setdefault("dropped_samples", 0)
        export_checkpoint(checkpoint, output_dir, summary)
    log.info("SFT run %s already finished at step %d: nothing to train", info["run_key"], steps)
    return SFTResult(
        final_model_dir=output_dir / FINAL_DIR,
        loss_history=_loss_history(state.get("log_history", [])),
        steps=steps,
        train_samples=int(summary["train_samples"]),
        dropped_samples=int(summary["dropped_samples"]),
        resumed_from=checkpoint,
        seconds=0.0,
        run_key=info["run_key"],
    )


# ---------------------------------------------------------------------------- training


def _load_student(model_path: str, settings: SFTSettings):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prismatic_assets.core.models import resolve_model

    path = resolve_model(model_path)
    # Never run code shipped with a model folder here (transformers would otherwise ask on stdin).
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the tokenizer of {model_path} has no chat template; train an instruction-tuned "
            "model or save a tokenizer with a chat template into the model folder"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # bf16 weights where the device computes in bf16 (a 7B student's fp32 weights, gradients
    # and Adam state need ~120 GB); elsewhere fp32 master weights, bf16 autocast if asked.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_weights_dtype(settings), trust_remote_code=False)
    return model, tokenizer


def _weights_dtype(settings: SFTSettings) -> str:
    import torch

    if settings.bf16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"



def build_trainer(model, tokenizer, dataset, output_dir: Path, settings: SFTSettings,
                  callbacks: CallbackLike | Sequence[CallbackLike] | None = None):
    """The `trl.SFTTrainer` that `train_sft` runs (its `train_dataset` holds the tokenized,
    label-masked examples: useful to inspect what the loss sees)."""
    from trl import SFTTrainer

    from prismatic_assets.core.sft_callbacks import as_callbacks

    if settings.padding_free:
        # What TRL sets when it builds its own collator: the saved student agrees on its pad token.
        model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return SFTTrainer(
        model=model,
        args=build_sft_config(settings, output_dir),
        data_collator=_padding_free_collator(tokenizer) if settings.padding_free else None,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_peft_config(settings),
        callbacks=as_callbacks(callbacks),
    )


def _padding_free_collator(tokenizer):
    """TRL's collator in padding-free mode: a batch is one row of its samples end to end, with
    position ids restarting at each sample and no attention mask, so transformers attends
    within each sample only (a block-diagonal causal mask; flash attention's varlen kernels
    on a GPU). Passed as the Trainer's collator rather than through `SFTConfig.padding_free`,
    which TRL refuses with `max_length` unless it packs (packing would put more samples in a
    step): TRL still truncates each sample to `max_length` while preparing the data."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)


def train_sft(
    model_path: str,
    samples: Sequence[Sample],
    output_dir: Path,
    settings: SFTSettings = SFTSettings(),
    resume: bool = True,
    callbacks: CallbackLike | Sequence[CallbackLike] | None = None,
) -> SFTResult:
    """Fine-tune `model_path` on `samples` and save the result to ``output_dir/final``.

    `model_path`: a model folder, hub id or `models.PACKAGED_MODEL`. `resume`: continue from
    the last complete checkpoint in `output_dir` when there is one and it belongs to the same
    run (same base model, data and training settings; else a ValueError says what differs);
    with False, existing checkpoints are deleted and training starts at step 0.
    `callbacks`: TrainerCallbacks and/or plain `fn(step, loss)` progress hooks.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dataset = samples_to_dataset(samples)
    info = _run_info(model_path, samples, settings)
    resume_from = prepare_output_dir(output_dir, info, resume)
    if resume_from is not None:
        finished = _finished_run(resume_from, output_dir, info, settings, len(samples))
        if finished is not None:
            return finished

    model, tokenizer = _load_student(model_path, settings)
    trainer = build_trainer(model, tokenizer, dataset, output_dir, settings, callbacks)
    train_samples = len(trainer.train_dataset)
    if train_samples == 0:
        raise ValueError(
            f"no sample has a response token within max_length={settings.max_length}: "
            "raise SFTSettings.max_length or shorten the prompts"
        )
    counts = {"train_samples": train_samples, "dropped_samples": len(samples) - train_samples}
    if is_main_process():
        write_json_atomic(output_dir / RUN_INFO_FILE, {**info, **counts})
    if resume_from is not None:
        log.info("resuming SFT from %s", resume_from)
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        seconds = time.perf_counter() - start
        steps = int(trainer.state.global_step)
        final = save_final_atomic(trainer, tokenizer, output_dir, {**info, **counts, "steps": steps})
    except Exception as exc:
        if not disk_full(exc, output_dir):
            raise
        if is_main_process():
            remove_incomplete_checkpoints(output_dir)
        kept = complete_checkpoints(output_dir)
        where = (f"the last complete checkpoint, {kept[-1].name} ({folder_mb(kept[-1]):.0f} MB), is kept and a "
                 "rerun resumes from it" if kept else "no checkpoint was complete, so a rerun starts at step 0")
        raise SFTDiskFull(
            f"the disk filled up while saving under {output_dir} ({str(exc).strip().splitlines()[0][:200]}): "
            f"{where}; the half-written folder was removed. Free space (df -h {output_dir}), lower "
            f"save_total_limit, or put output_dir on a larger disk, then run again.") from exc
    return SFTResult(
        final_model_dir=final,
        loss_history=_loss_history(trainer.state.log_history),
        steps=steps,
        train_samples=train_samples,
        dropped_samples=counts["dropped_samples"],
        resumed_from=resume_from,
        seconds=seconds,
        run_key=info["run_key"],
    )
