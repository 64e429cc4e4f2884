"""Profile settings: one YAML file per profile under `resources/` (local.yaml, paper.yaml).

A profile decides which resources are bound and with what configuration (models, devices,
projection) plus the method's parameters. `load_settings` validates a file strictly: an
unknown key is an error naming the file and the key, so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: The profile files shipped with the project.
PROFILES_DIR = Path(__file__).resolve().parent.parent / "resources"
DEFAULT_PROFILE = "local"


@dataclass(frozen=True)
class SeedSettings:
    source: str = "champ"  # "champ", a .jsonl/.json/.parquet path, or "hf:owner/name[:split]"
    fields: str | None = None  # e.g. "prompt=question,response=solution,answer=final"
    limit: int | None = None
    holdout_fraction: float = 0.2  # kept out of the pool for evaluation
    holdout_seed: int = 0
    max_chars: int = 100_000


@dataclass(frozen=True)
class ProxySettings:
    model: str = "packaged:smollm2-135m-instruct"
    device: str = "cpu"
    dtype: str = "float32"
    params: str | None = None  # regex over parameter names; None = all (the paper)
    autocast: str | None = None
    max_length: int = 1024


@dataclass(frozen=True)
class ProjectionSettings:
    kind: str = "countsketch"  # "rademacher" (dense, the paper's GPU path) or "countsketch"
    dim: int = 1024
    seed: int = 0


@dataclass(frozen=True)
class ClusteringSettings:
    ratio: float = 0.05  # K = max(2, round(ratio * N)); the paper uses 0.01 on large pools
    niter: int = 20
    seed: int = 0
    sparse_ratio: float = 0.5


@dataclass(frozen=True)
class ScoreSettings:
    q: float = 1.0


@dataclass(frozen=True)
class GeneratorSettings:
    """An LLM endpoint: the offline vLLM engine, an OpenAI-compatible server, or HF generate."""

    backend: str = "vllm"  # "vllm", "openai" or "transformers"
    model: str = "packaged:smollm2-135m-instruct"
    tensor_parallel_size: int = 1  # vllm: GPUs per engine
    max_model_len: int | None = 2048  # vllm
    enforce_eager: bool = True  # vllm: skip torch.compile (minutes on a CPU)
    base_url: str | None = None  # openai: e.g. http://gpu-node:8000/v1 (else $OPENAI_BASE_URL)
    max_concurrency: int = 8  # openai
    device: str = "cpu"  # transformers


@dataclass(frozen=True)
class SynthesisSettings:
    """One synthesis round's parameters (the paper's sampling settings are the defaults)."""

    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    teacher: GeneratorSettings = field(default_factory=GeneratorSettings)
    requests_per_round: int = 8
    few_shot: int = 5
    new_per_request: int = 2
    strategy: str = "random"  # "random" (the paper) or "sparse_cluster"
    n_solutions: int = 3
    min_agree: int = 2
    stated_answers: bool = False  # also read "The answer is X" from teacher solutions without \boxed{}
    problem_temperature: float = 1.0
    problem_top_p: float = 0.95
    problem_max_tokens: int = 256
    solution_temperature: float = 0.75
    solution_top_p: float = 0.95
    solution_max_tokens: int = 384
    ngram: int = 10
    seed: int = 0
    eval_sets: tuple[str, ...] = ("holdout",)  # decontaminate against: "holdout" (the seed split)
    demo_rounds: int = 1  # rounds `prismatic demo` runs after the backbone


@dataclass(frozen=True)
class DistillSettings:
    """The student and its supervised fine-tuning (TRL's SFTTrainer)."""

    student: str = "packaged:smollm2-135m-instruct"
    rounds: str = "all"  # "all", "none" (seed only) or a comma list such as "1,2"
    max_steps: int = 20
    learning_rate: float = 5e-5
    per_device_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    bf16: bool = False
    save_steps: int = 5
    seed: int = 0
    registered_name: str = "prismatic-student"


@dataclass(frozen=True)
class EvaluationSettings:
    """Held-out evaluation: the seed hold-out split, an offline GSM8K-style set, benchmark files."""

    backend: str = "vllm"  # how the students generate: "vllm" or "transformers"
    gsm_symbolic: int = 30  # problems from reasoning-gym's gsm_symbolic (0 = none)
    gsm_symbolic_seed: int = 1234
    holdout: bool = True  # evaluate on the seed hold-out split
    holdout_limit: int = 0  # evaluate on the first N hold-out problems only (0 = all of them)
    stated_answers: bool = False  # also grade "The answer is X" in responses without \boxed{}
    files: tuple[str, ...] = ()  # JSONL/Parquet benchmark files (problem, answer), e.g. MATH500
    max_tokens: int = 384
    max_model_len: int = 2048
    tensor_parallel_size: int = 1


@dataclass(frozen=True)
class TrackingSettings:
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite under data_dir
    experiment: str = "prismatic"


@dataclass(frozen=True)
class Settings:
    profile: str = DEFAULT_PROFILE
    data_dir: str = "data"
    seed: SeedSettings = field(default_factory=SeedSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    projection: ProjectionSettings = field(default_factory=ProjectionSettings)
    clustering: ClusteringSettings = field(default_factory=ClusteringSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    synthesis: SynthesisSettings = field(default_factory=SynthesisSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def store_path(self) -> Path:
        return self.data_path / "prismatic.duckdb"

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        default = known[name].default_factory() if known[name].default_factory is not dataclasses.MISSING \
            else known[name].default
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value or {}, f"{where}.{name}")
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def load_settings(profile_or_path: str | None = None) -> Settings:
    """Settings from a profile name ("local", "paper") or a YAML path.

    None means $PRISMATIC_PROFILE, else "local". A relative data_dir is resolved against
    $PRISMATIC_DATA_DIR when set, else the current directory.
    """
    choice = profile_or_path or os.environ.get("PRISMATIC_PROFILE") or DEFAULT_PROFILE
    path = Path(choice)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILES_DIR / f"{choice}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"profile {choice!r}: {path} not found; available profiles: {available}, "
                                "or pass a path to a YAML file")
    values = yaml.safe_load(path.read_text()) or {}
    settings = _build(Settings, values, str(path))
    if os.environ.get("PRISMATIC_DATA_DIR"):
        settings = settings.replace(data_dir=os.environ["PRISMATIC_DATA_DIR"])
    return settings
