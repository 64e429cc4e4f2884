"""SFT output folders: checkpoints, the atomic publication of `final`, and a full disk.

`core.sft.train_sft` trains; this module keeps its output folder sound whatever happens:
- `complete_checkpoints`: the checkpoints whose trainer state was written (the Trainer
  writes it last); `remove_incomplete_checkpoints` deletes a save cut short.
- `prepare_output_dir`: checks the resume key (`prismatic_sft.json`) and picks the
  checkpoint to resume from, or clears old checkpoints for a fresh run.
- `save_final_atomic` / `export_checkpoint`: write the model and tokenizer to a temporary
  folder and rename it to ``final``, so ``final`` is always whole.
- `disk_full`: whether a failure was a full disk (torch.save and safetensors do not raise
  OSError for it), so the run can say so and keep the last complete checkpoint.

Only the main process of a multi-process launch deletes or writes (`is_main_process`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FINAL_DIR = "final"
RUN_INFO_FILE = "prismatic_sft.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is racy)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise




class SFTDiskFull(OSError):
    """Saving a checkpoint or the final model ran out of disk space; the half-written folder was removed."""


_FULL_TEXTS = ("no space left on device", "file too large", "disk quota exceeded", "storagefull",
               "file write failed")
#: torch.save's zip writer reports a short write as "[enforce fail at inline_container.cc] .
#: unexpected pos 5120 vs 5012", which says nothing about the disk.
_SHORT_WRITE = re.compile(r"unexpected pos \d+ vs \d+")


def disk_full(exc: BaseException, output_dir: Path | None = None) -> bool:
    """True when `exc` (or what caused it) is a full disk. torch.save and safetensors do not
    raise OSError for it, so their texts count too, and so does a failure that left an
    incomplete checkpoint on a file system with less room than a checkpoint needs."""
    if output_dir is not None and _short_of_space(Path(output_dir)):
        return True
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (28, 27, 122):  # ENOSPC, EFBIG, EDQUOT
            return True
        if any(text in str(exc).lower() for text in _FULL_TEXTS) or _SHORT_WRITE.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def remove_incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """Delete checkpoint folders that `complete_checkpoints` ignores (a save cut short); return them."""
    output_dir = Path(output_dir)
    complete = set(complete_checkpoints(output_dir))
    removed = [p for p in output_dir.glob("checkpoint-*")
               if p.is_dir() and _CHECKPOINT.match(p.name) and p not in complete]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def _short_of_space(output_dir: Path) -> bool:
    """An incomplete checkpoint sits on a file system with less free space than a complete one takes."""
    complete = set(complete_checkpoints(output_dir))
    partial = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p not in complete]
    if not partial:
        return False
    needed = max([folder_mb(p) for p in complete] + [folder_mb(p) for p in partial]) * 1e6
    return shutil.disk_usage(output_dir).free < needed


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint folders whose trainer state was written (the Trainer writes it last), oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for child in output_dir.iterdir():
        m = _CHECKPOINT.match(child.name)
        if not m or not child.is_dir():
            continue
        try:
            state = json.loads((child / "trainer_state.json").read_text())
        except (OSError, ValueError):
            log.warning("ignoring incomplete checkpoint %s (no readable trainer_state.json)", child)
            continue
        if state.get("global_step") != int(m.group(1)):
            log.warning("ignoring checkpoint %s: its trainer state is at step %s", child, state.get("global_step"))
            continue
        found.append((int(m.group(1)), child))
    return [path for _, path in sorted(found)]


def is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch, or a plain single process."""
    return os.environ.get("RANK", "0") == "0"


def prepare_output_dir(output_dir: Path, info: dict[str, Any], resume: bool) -> Path | None:
    """Check the resume key and return the checkpoint to resume from (None: start fresh).

    With `resume=False` old checkpoints are deleted, so that a later resume cannot pick up
    a checkpoint of an earlier run with a higher step number. Only the main process of a
    multi-process launch deletes or writes; every process reaches the same decision.
    """
    info_path = output_dir / RUN_INFO_FILE
    if is_main_process():
        remove_incomplete_checkpoints(output_dir)  # a save cut short by a kill or a full disk
    checkpoints = complete_checkpoints(output_dir)
    if resume and checkpoints:
        try:
            previous = json.loads(info_path.read_text())
        except (OSError, ValueError):
            previous = {}
        if previous.get("run_key") != info["run_key"]:
            changed = sorted(k for k in info if k != "run_key" and previous.get(k) != info[k])
            why = f"differs in: {', '.join(changed)}" if previous else f"its {RUN_INFO_FILE} is missing or unreadable"
            raise ValueError(
                f"{output_dir} holds checkpoints of a different training run ({why}); pass "
                "resume=False to discard them and start over, or choose another output_dir"
            )
        return checkpoints[-1]
    if is_main_process():
        for path in output_dir.glob("checkpoint-*"):
            if path.is_dir():
                shutil.rmtree(path)
        write_json_atomic(info_path, info)
    return None


def _publish(tmp: Path, output_dir: Path, info: dict[str, Any]) -> Path:
    """Write the run info into `tmp`, then rename `tmp` to ``output_dir/final`` (replacing it)."""
    final = output_dir / FINAL_DIR
    (tmp / "training_args.bin").unlink(missing_ok=True)  # pickled Trainer args: checkpoint-only
    write_json_atomic(tmp / RUN_INFO_FILE, info)
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{FINAL_DIR}-old-", dir=output_dir))
        os.replace(final, old / FINAL_DIR)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def save_final_atomic(trainer, tokenizer, output_dir: Path, info: dict[str, Any]) -> Path:
    """Save the (merged) model and tokenizer to a temp folder, then rename it to `final`.

    `trainer.save_model` is collective under FSDP / DeepSpeed ZeRO-3 (it gathers the shards)
    and writes on the main process only. A LoRA adapter is merged on the main process
    (sharded LoRA training then needs the adapter merged offline instead).
    """
    acc = trainer.accelerator
    tmp = output_dir / f".{FINAL_DIR}-tmp-{info['run_key']}"  # the same path in every process
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left over from a crash
    acc.wait_for_everyone()
    try:
        model = acc.unwrap_model(trainer.model)
        if hasattr(model, "merge_and_unload"):  # a PEFT model: bake the adapter in
            if acc.is_main_process:
                model.merge_and_unload().save_pretrained(tmp, safe_serialization=True)
        else:
            trainer.save_model(str(tmp))
        if acc.is_main_process:
            tokenizer.save_pretrained(tmp)
            _publish(tmp, output_dir, info)
    finally:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    return output_dir / FINAL_DIR


def export_checkpoint(checkpoint: Path, output_dir: Path, info: dict[str, Any]) -> Path:
    """Write ``output_dir/final`` from a checkpoint (its LoRA adapter merged), without training."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (checkpoint / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(checkpoint, dtype="float32").merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)  # the Trainer saves it with every checkpoint
    tmp = Path(tempfile.mkdtemp(prefix=f".{FINAL_DIR}-tmp-", dir=output_dir))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private; `final` should not be
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        return _publish(tmp, output_dir, info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
