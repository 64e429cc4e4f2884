"""One SFT training process (of `num_processes`), started by `pipeline.distill.sft_command`.

    python -m prismatic_assets.pipeline.sft_worker --student M --data train.jsonl \
        --output-dir DIR --settings '{"max_steps": 10, ...}'

Under accelerate/torchrun every rank runs this and trains its share; the Trainer handles
the distributed setup (NCCL on GPUs, gloo on CPUs). Rank 0 alone reports to Dagster through
Pipes (logs, then the result as materialization metadata) and writes `sft_result.json`.
Launched outside Dagster it simply trains. It needs the training stack only (torch,
transformers, trl, datasets, accelerate): no config, store or Dagster (dagster-pipes is
imported only when Dagster launched it), so it also runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

#: What rank 0 writes into the output folder when training ends (read by pipeline.distill.read_result).
RESULT_FILE = "sft_result.json"
#: Set by Dagster Pipes in the environment of a process it launched (dagster_pipes.DAGSTER_PIPES_CONTEXT_ENV_VAR).
PIPES_CONTEXT_ENV_VAR = "DAGSTER_PIPES_CONTEXT"


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _pipes():
    """Dagster Pipes on rank 0 when launched by Dagster; otherwise nothing."""
    if _rank() == 0 and PIPES_CONTEXT_ENV_VAR in os.environ:
        from dagster_pipes import open_dagster_pipes

        return open_dagster_pipes()
    return contextlib.nullcontext()


def read_training_set(path: Path):
    """The samples of a JSON Lines training set (pipeline.distill.write_training_set writes it)."""
    from prismatic_assets.core.samples import Sample

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [Sample(**row) for row in rows]


def main(argv: list[str] | None = None) -> int:
    from prismatic_assets.core.sft import SFTSettings, train_sft

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", required=True)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--settings", required=True, help="SFTSettings as JSON")
    args = parser.parse_args(argv)
    settings = SFTSettings(**json.loads(args.settings))
    samples = read_training_set(args.data)
    with _pipes() as pipes:
        def progress(step: int, loss: float) -> None:
            if pipes is not None:
                pipes.log.info(f"SFT step {step}/{settings.max_steps}: loss {loss:.4f}")
        result = train_sft(args.student, samples, args.output_dir, settings, resume=True, callbacks=[progress])
        if _rank() != 0:
            return 0
        summary = {"final_model_dir": str(result.final_model_dir), "steps": result.steps,
                   "loss_history": result.loss_history, "train_samples": result.train_samples,
                   "dropped_samples": result.dropped_samples, "seconds": result.seconds,
                   "resumed_from": str(result.resumed_from) if result.resumed_from else None,
                   "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
        tmp = args.output_dir / (RESULT_FILE + ".tmp")
        tmp.write_text(json.dumps(summary))
        os.replace(tmp, args.output_dir / RESULT_FILE)
        if pipes is not None:
            pipes.report_asset_materialization(metadata={
                "steps": result.steps, "world_size": summary["world_size"],
                "final_loss": result.loss_history[-1][1] if result.loss_history else float("nan"),
                "train_seconds": round(result.seconds, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
