"""scripts/gpu_smoke.py, the GPU smoke test, dry-run on CPU with tiny models so it cannot rot.

Twice: with everything installed (the engine checks run on the transformers backend), and
with the modules a bare GPU machine lacks blocked in every process it starts (vLLM, pydantic,
Dagster, DuckDB, polars, MLflow, faiss), as on the lent machine of ../shared/gpu/README.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What the lent GPU machine does not have (trl and datasets travel there as wheels).
ABSENT_ON_GPU_MACHINE = ("vllm", "pydantic", "pydantic_core", "dagster", "dagster_pipes", "duckdb", "polars",
                         "mlflow", "faiss")
BLOCKER = '''import sys

# A None entry in sys.modules makes `import name` fail and importlib.util.find_spec(name)
# return None, as for a module that is not installed.
for name in {blocked!r}:
    sys.modules[name] = None
'''


def _dry_run(env: dict | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_smoke.py"), "--tiny"], capture_output=True,
                          text=True, timeout=900, cwd=ROOT, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("[gpu-smoke]")]
    return done, lines


def _checks(lines: list[str]) -> list[str]:
    return [line.split(":")[0].split(" ", 2)[2] for line in lines]


def test_gpu_smoke_script_passes_its_cpu_dry_run():
    done, lines = _dry_run()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _checks(lines) == ["engine generator", "engine teacher", "sft", "gradients", "gradient memory", "total"]
    assert all(" PASS " in line for line in lines)


def test_gpu_smoke_dry_run_without_the_modules_a_bare_gpu_machine_lacks(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(ABSENT_ON_GPU_MACHINE)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    probe = subprocess.run([sys.executable, "-c", "import pydantic"], capture_output=True, text=True, env=env)
    assert "ModuleNotFoundError" in probe.stderr  # the blocker is active in child processes
    done, lines = _dry_run(env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _checks(lines) == ["engine generator", "engine teacher", "sft", "gradients", "gradient memory", "total"]
    assert [line for line in lines if " SKIP " in line] == [
        "[gpu-smoke] SKIP engine generator: skipped: vllm not installed",
        "[gpu-smoke] SKIP engine teacher: skipped: vllm not installed"]
    assert all(" PASS " in line for line in lines if " SKIP " not in line)


def test_gpu_smoke_refuses_to_run_without_cuda_unless_tiny():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_smoke.py")], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 2 and "no CUDA device" in done.stdout


def test_the_smoke_launches_sft_as_the_pipeline_does(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from gpu_smoke import sft_launch
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    from prismatic_assets.core.sft import SFTSettings
    from prismatic_assets.infra.config import DistillConfig
    from prismatic_assets.pipeline.distill import sft_command

    settings = SFTSettings(max_steps=10, bf16=True, gradient_checkpointing=True)
    distill = DistillConfig(student="/m", launcher="accelerate", num_processes=1, sft=settings)
    data, out = tmp_path / "train.jsonl", tmp_path / "sft"
    assert sft_launch("/m", data, out, settings, "bf16") == sft_command(distill, data, out)


def test_the_sft_worker_knows_the_pipes_variable_without_importing_dagster_pipes():
    import dagster_pipes

    from prismatic_assets.pipeline.sft_worker import PIPES_CONTEXT_ENV_VAR

    assert PIPES_CONTEXT_ENV_VAR == dagster_pipes.DAGSTER_PIPES_CONTEXT_ENV_VAR
