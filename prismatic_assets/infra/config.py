"""The one typed configuration: every setting, its type and its default, defined once.

A profile is a YAML file that overrides some of these defaults (`resources/local.yaml`,
`resources/paper.yaml`, or any path). Models, devices and data default to the embedded CPU
setup (SmolLM2-135M, CHAMP); the method's parameters default to the paper's. `local.yaml`
overrides what the small CPU model needs, `paper.yaml` the GPU models and scale.

    config = load_config("paper")          # or a path; None: $PRISMATIC_PROFILE, else "local"
    config.synthesis.teacher.model         # typed access
    describe(config)                       # every key with its value and where it came from

Validation is strict: an unknown key, a wrong type or a choice outside the allowed ones is
a `ConfigError` naming the file, the key and the valid choices; impossible combinations
(min_agree > n_solutions, a dense projection of every parameter on a CPU) fail the same
way. GPU placement (which engine owns which devices) is checked in `engines.check_placement`.

Nested blocks reuse the core's own settings types where the core has one
(`SamplingConfig`, `SFTSettings`), so their defaults also live in one place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prismatic_assets.core.generation import PROBLEM_SAMPLING, SOLUTION_SAMPLING, SamplingConfig
from prismatic_assets.core.models import PACKAGED_MODEL
from prismatic_assets.core.sft import SFTSettings

#: Where the profiles live: the top-level `resources/` folder of a source checkout, or the
#: copy shipped inside the wheel (`prismatic_assets/profiles`).
SOURCE_PROFILES_DIR = Path(__file__).resolve().parents[2] / "resources"
DEFAULT_PROFILE = "local"

# The core dataclasses take the same strict rules as the models below.
SamplingConfig.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
SFTSettings.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]


#: The allowed values of settings that callers outside a profile (API, CLI) pass too.
Dtype = Literal["float32", "bfloat16", "float16"]
Autocast = Literal["bf16"]
ProjectionKind = Literal["countsketch", "rademacher"]


class ConfigError(ValueError):
    """A profile that cannot be used as written; the message names the file, key and fix."""


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SeedConfig(_Block):
    source: str = Field("champ", description="'champ', 'world' (the procedural world of the `world` block), a "
                        ".jsonl/.json/.parquet path, or hf:owner/name[:split]")
    fields: Optional[str] = Field(None, description="field mapping, e.g. prompt=question,response=solution")
    limit: Optional[int] = Field(None, ge=1, description="load only the first N valid rows")
    holdout_fraction: float = Field(0.2, ge=0, lt=1, description="kept out of the pool for evaluation")
    holdout_seed: int = 0
    max_chars: int = Field(100_000, ge=1, description="longer texts are rejected rows")


class ProxyConfig(_Block):
    model: str = Field(PACKAGED_MODEL, description="folder, hub id, .gguf file or packaged name")
    device: str = Field("cpu", description="cpu, cuda, cuda:N")
    dtype: Dtype = "float32"
    params: Optional[str] = Field(None, description="regex restricting the gradient to matching parameters")
    autocast: Optional[Autocast] = Field(None, description="bf16 autocast (GPUs)")
    max_length: int = Field(1024, ge=8, description="token budget per sample")
    trust_remote_code: bool = Field(False, description="run code shipped with a hub model (off unless set)")


class ProjectionConfig(_Block):
    kind: ProjectionKind = Field(
        "countsketch", description="countsketch (sparse JL, CPU) or rademacher (dense, the paper's GPU path)")
    dim: int = Field(1024, ge=1)
    seed: int = 0


class ClusteringConfig(_Block):
    ratio: float = Field(0.05, gt=0, le=1, description="K = max(2, round(ratio * N)); the paper: 0.01")
    niter: int = Field(20, ge=1)
    seed: int = 0
    sparse_ratio: float = Field(0.5, gt=0, lt=1, description="clusters below the size at int(K * ratio) are sparse")
    max_points_per_centroid: Optional[int] = Field(
        None, ge=1, description="train k-means on a sample of K x this many points (None: every point); "
                                "every point is still assigned")
    method: Literal["flat", "two_level"] = Field(
        "flat", description="flat: one k-means over the pool (the paper); two_level: coarse groups, then k-means "
                            "inside each with K split by size (~sqrt(K) times cheaper per iteration); either way "
                            "every point goes to its exact nearest final centroid")
    coarse: Optional[int] = Field(None, ge=1, description="two_level: coarse groups (None: round(sqrt(K)))")
    refine: int = Field(3, ge=0, description="two_level: Lloyd iterations over every point after the groups' "
                                             "k-means, each group's points against the centroids of the `probe` "
                                             "groups nearest to it")
    probe: int = Field(16, ge=1, description="two_level: coarse groups (its own first) whose centroids a group's "
                                             "points are compared with while refining")
    assign: Literal["exact", "probe"] = Field(
        "exact", description="exact: every point to its nearest of all K final centroids (one more 2 N K d pass); "
                             "probe (two_level only): to the nearest of those its group probes, approximate "
                             "and ~C / probe times cheaper (docs/BENCHMARKS.md: how far it moves the sparse flags)")

    @model_validator(mode="after")
    def _probe_needs_two_level(self) -> "ClusteringConfig":
        if self.assign == "probe" and self.method != "two_level":
            raise ValueError("clustering.assign: probe searches the coarse groups of method: two_level; "
                             "set clustering.method: two_level or clustering.assign: exact")
        return self


class ScoreConfig(_Block):
    q: float = Field(1.0, ge=0, description="Renyi order: 1 = Shannon (the paper), 2, inf")


class ComputeConfig(_Block):
    """Where gradient work runs: in the step's process, or on Ray (local or a cluster)."""

    backend: Literal["local", "ray"] = "local"
    ray_address: Optional[str] = Field(None, description="None: $RAY_ADDRESS, else a local Ray")
    workers: int = Field(1, ge=1, description="Ray actors, each holding one proxy")
    gpus_per_worker: float = Field(0.0, ge=0)
    cpus_per_worker: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1, description="most samples per gradient batch")
    memory_gb: Optional[float] = Field(
        3.0, gt=0, description="GiB the gradient step may use in all (model, projection table, batches): resident "
                               "memory on CPU, allocated device memory on a GPU; batches, logit chunks and "
                               "recomputed layers are planned to fit. None: batch_size samples per step, unbounded")
    shard_rows: int = Field(4096, ge=1, description="vectors per Parquet shard; a killed run keeps finished shards")
    shard_seconds: float = Field(60.0, gt=0, description="a shard is also written after this long: a killed run "
                                 "loses at most this much gradient work")


class EngineConfig(_Block):
    """An LLM engine: the offline vLLM engine, an OpenAI-compatible server, or HF generate."""

    backend: Literal["vllm", "openai", "transformers"] = "vllm"
    model: str = PACKAGED_MODEL
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs per engine")
    devices: Optional[tuple[int, ...]] = Field(None, description="vllm: GPU ids this engine owns (None: 0..tp-1)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vllm: share of each GPU's memory")
    keep_loaded: bool = Field(False, description="keep the engine open across stages (else closed after each)")
    max_model_len: Optional[int] = Field(2048, ge=1, description="vllm: context length (None: the model's)")
    enforce_eager: bool = Field(True, description="vllm: skip torch.compile and CUDA graphs (minutes on a CPU)")
    base_url: Optional[str] = Field(None, description="openai: e.g. http://gpu-node:8000/v1 (else $OPENAI_BASE_URL)")
    max_concurrency: int = Field(64, ge=1, description="openai: requests in flight")
    device: str = Field("cpu", description="transformers: torch device")
    trust_remote_code: bool = Field(False, description="run code shipped with the model (off unless set)")
    revision: Optional[str] = Field(None, description="a label of the weights, part of the generation cache key: "
                                    "openai: change it whenever the server's model changes; vllm: a hub revision")

    @model_validator(mode="after")
    def _devices_match_tp(self) -> "EngineConfig":
        if self.devices is not None and len(self.devices) != self.tensor_parallel_size:
            raise ValueError(f"devices={list(self.devices)} lists {len(self.devices)} GPU(s) but "
                             f"tensor_parallel_size={self.tensor_parallel_size}: list one GPU per shard")
        return self

    def device_ids(self) -> tuple[int, ...]:
        """The GPUs this engine owns (vllm backend)."""
        return self.devices if self.devices is not None else tuple(range(self.tensor_parallel_size))


class SynthesisConfig(_Block):
    """One synthesis round's parameters (the paper's settings are the defaults of the method)."""

    generator: EngineConfig = EngineConfig()
    teacher: EngineConfig = EngineConfig()
    requests_per_round: int = Field(8, ge=1)
    few_shot: int = Field(5, ge=1, description="pool problems shown per request (the paper: 5)")
    new_per_request: int = Field(2, ge=1, description="new problems asked per request (the paper: 2)")
    strategy: Literal["random", "sparse_cluster"] = "random"
    n_solutions: int = Field(3, ge=1, description="teacher solutions per problem (the paper: 3)")
    min_agree: int = Field(2, ge=1, description="agreeing answers that verify a problem (the paper: 2)")
    stated_answers: bool = Field(False, description="also read 'The answer is X' without \\boxed{}")
    problem_sampling: SamplingConfig = PROBLEM_SAMPLING
    solution_sampling: SamplingConfig = SOLUTION_SAMPLING
    ngram: int = Field(10, ge=1, description="n-gram overlap with evaluation texts that rejects a problem")
    seed: int = 0
    chunk_size: int = Field(256, ge=1, description="requests per engine call; outputs stored after each")

    @model_validator(mode="after")
    def _voting_possible(self) -> "SynthesisConfig":
        if self.min_agree > self.n_solutions:
            raise ValueError(f"min_agree={self.min_agree} > n_solutions={self.n_solutions}: no problem could ever "
                             "be verified; lower min_agree or raise n_solutions")
        return self

    def problem_sampling_for(self, seed: int) -> SamplingConfig:
        return _with(self.problem_sampling, n=1, seed=seed)

    def solution_sampling_for(self, seed: int) -> SamplingConfig:
        return _with(self.solution_sampling, n=self.n_solutions, seed=seed)


class DistillConfig(_Block):
    """The student and its supervised fine-tuning, run in its own process (see pipeline/distill.py)."""

    student: str = PACKAGED_MODEL
    rounds: str = Field("all", description="'all', 'none' (seed only) or a comma list such as '1,2'")
    registered_name: str = "prismatic-student"
    launcher: Literal["accelerate", "torchrun", "python"] = Field(
        "accelerate", description="how the SFT process starts (python: one plain process)")
    num_processes: int = Field(1, ge=1, description="training processes (one per GPU); sft.sharding shards them")
    max_context: Optional[int] = Field(None, ge=1, description="the student's context length (None: read from "
                                       "its config before training)")
    sft: SFTSettings = SFTSettings()


class EvaluationConfig(_Block):
    """Held-out evaluation: the seed hold-out split, an offline GSM8K-style set, benchmark files."""

    engine: EngineConfig = EngineConfig()  # `model` is ignored: the students are evaluated
    gsm_symbolic: int = Field(30, ge=0, description="problems from reasoning-gym's gsm_symbolic (0 = none)")
    gsm_symbolic_seed: int = 1234
    holdout: bool = Field(True, description="evaluate on the seed hold-out split")
    holdout_limit: int = Field(0, ge=0, description="the first N hold-out problems only (0 = all)")
    stated_answers: bool = False
    files: tuple[str, ...] = Field((), description="JSONL/Parquet benchmark files (problem, answer)")
    max_tokens: int = Field(384, ge=1)
    chunk_size: int = Field(256, ge=1, description="problems per engine call; answers stored after each (a rerun "
                            "asks only for the rest)")


class CompareConfig(_Block):
    """The profile's `compare` section: which data sets `dataset_comparison` puts beside the seed pool."""

    datasets: list[str] = Field(default_factory=list,
                                description="paths (.jsonl/.json/.parquet), 'champ' or 'hf:owner/name[:split]'")
    names: list[str] = Field(default_factory=list, description="one label per data set (default: file stems)")
    fields: Optional[str] = Field(None, description="field mapping for the data sets, e.g. prompt=question,...")
    limit: Optional[int] = Field(None, ge=1, description="read only the first N valid rows of each data set")
    include_seed: bool = Field(True, description="compare the seed pool too, as the first set ('seed')")
    qs: tuple[float, ...] = Field((1.0, 2.0, float("inf")), min_length=1,
                                  description="Renyi orders of each set's G-Vendi (.inf in YAML)")
    clusters: Optional[int] = Field(None, ge=2, description="clusters of the union for coverage (None: ~sqrt(N))")
    cluster_seed: int = 0
    examples: int = Field(2, ge=0, description="samples shown per distinguishing cluster")


class WorldPoolConfig(_Block):
    """The shape of the world's seed pool (`seed.source: world`): skewed as real data sets are."""

    size: int = Field(150, ge=1, description="seed problems drawn, before the seed.holdout_fraction split")
    family_zipf: float = Field(1.5, ge=0, description="family at rank r (its place in world.families) weighs "
                               "r**-family_zipf: 1.5 puts half the pool in the first family, ~1.6% in the tenth")
    level_decay: float = Field(0.4, gt=0, le=1, description="level j weighs level_decay**j: 0.4 gives about 64% "
                               "/ 26% / 10% over three levels")


class WorldGeneratorConfig(_Block):
    """The pool-conditioned generator (`core/world.py`), the procedural stand-in for the paper's few-shot LLM."""

    few_shot: int = Field(5, ge=1, description="pool problems shown per request (the paper: 5)")
    new_per_request: int = Field(2, ge=1, description="problems written per request (the paper: 2)")
    same_cell: float = Field(0.7, ge=0, le=1, description="share that keeps an exemplar's family and level")
    neighbour_level: float = Field(0.2, ge=0, le=1, description="share at the exemplar's family one level up "
                                   "(one down at the top level)")
    new_family: float = Field(0.1, ge=0, le=1, description="share of a family none of the request's exemplars has")
    max_attempts: int = Field(20, ge=1, description="tries per problem for one not seen before (else the slot is a "
                              "recorded 'no_fresh_problem')")

    @model_validator(mode="after")
    def _shares_add_up(self) -> "WorldGeneratorConfig":
        total = self.same_cell + self.neighbour_level + self.new_family
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"same_cell + neighbour_level + new_family = {total:g}: the three shares must add up "
                             "to 1")
        return self


class WorldConfig(_Block):
    """A procedural world of reasoning-gym task families x difficulty levels (`core/world.py`).

    It supplies the seed pool (`seed.source: world`), the arms' candidates and the students'
    held-out problems. `families` are in rank order: the first is the most frequent in the
    seed pool."""

    families: tuple[str, ...] = Field(
        ("basic_arithmetic", "gcd", "simple_equations", "letter_counting", "lcm", "count_bits", "base_conversion",
         "leg_counting", "chain_sum", "products"),
        description="reasoning-gym tasks with a derivation (or worked solution), most frequent first")
    levels: tuple[int, ...] = Field((0, 1, 2), description="curriculum levels, each its own band of difficulty")
    seed: int = Field(0, description="seed of the seed pool and of every generator request")
    pool: WorldPoolConfig = WorldPoolConfig()
    generator: WorldGeneratorConfig = WorldGeneratorConfig()
    held_out_per_family: int = Field(12, ge=1, description="held-out problems per family (spread over the levels) "
                                     "the students are scored on; never in a seed pool or accepted")
    held_out_seed: int = Field(10_007, description="seed of the held-out problems")


class ExperimentConfig(_Block):
    """`prismatic experiment`: one student per arm, trained alike, scored on held-out tasks."""

    max_steps: int = Field(150, ge=1, description="optimizer steps per student (the same for every arm)")
    batch_size: int = Field(8, ge=1, description="samples per step per student (distill.sft.per_device_batch_size "
                            "for the students)")
    ood_families: tuple[str, ...] = Field(
        ("fraction_simplification", "prime_factorization", "time_intervals", "spell_backward"),
        description="tasks never offered to any arm: the out-of-distribution split (world.held_out_per_family "
                    "each, at world.levels)")
    max_tokens: int = Field(320, ge=1, description="answer tokens per held-out problem (room for a derivation)")


ArmName = Literal["prismatic", "prismatic_targeted", "random", "naive"]
#: Every arm, in the order the demo reports them.
ARM_NAMES: tuple[ArmName, ...] = get_args(ArmName)


class ArmsConfig(_Block):
    """Arms compared round by round at an equal acceptance budget (`pipeline/arms.py`, `prismatic demo`)."""

    arms: tuple[ArmName, ...] = Field(
        ARM_NAMES, description="prismatic: the sparse-cluster filter, then a draw; prismatic_targeted: exemplars "
                               "from one sparse cluster per request, then the filter; random: a draw (the "
                               "control); naive: generation order")
    rounds: int = Field(3, ge=1, description="rounds `prismatic demo` runs after the backbone")
    requests_per_round: int = Field(15, ge=1, description="generator requests per arm per round, each writing "
                                    "world.generator.new_per_request problems from the arm's own pool")
    budget: int = Field(8, ge=1, description="samples each arm accepts per round")
    experiment: ExperimentConfig = ExperimentConfig()

    @model_validator(mode="after")
    def _distinct(self) -> "ArmsConfig":
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms={list(self.arms)} names an arm twice")
        return self


class StudyConfig(_Block):
    """`prismatic study`: does G-Vendi rank accuracy across training sets of equal size? (`pipeline/study.py`)

    The defaults fit the 2-core CPU budget of `make study` (docs/STUDY.md gives the arithmetic)."""

    pool: str = Field("procedural", description="'procedural' (reasoning-gym problems over families x levels), or a "
                      ".jsonl/.json/.parquet path, 'champ' or hf:owner/name[:split] (what `prismatic score` reads)")
    fields: Optional[str] = Field(None, description="field mapping of a pool file, e.g. prompt=q,response=a,answer=x,"
                                  "category=topic (the category is the family of span designs)")
    limit: Optional[int] = Field(None, ge=1, description="read only the first N valid rows of a pool file")
    families: tuple[str, ...] = Field(
        ("basic_arithmetic", "gcd", "lcm", "leg_counting", "letter_counting", "count_bits"),
        description="procedural pool: the reasoning-gym tasks (the in-distribution split)")
    levels: tuple[int, ...] = Field((0, 1), description="procedural pool: curriculum levels, spread evenly")
    pool_size: int = Field(576, ge=1, description="procedural pool: problems generated (before duplicates and "
                           "held-out overlaps are removed); every pool sample gets a gradient")
    designs: tuple[str, ...] = Field(
        ("span:1:1", "span:1:2", "span:2:2", "span:3:2", "span:all:all", "random:0", "cluster-balanced",
         "single-cluster"),
        description="one training set per design: span:F:L, random:S, cluster-balanced, greedy, single-cluster "
                    "(core/study_sets.py)")
    set_size: int = Field(40, ge=2, description="samples per training set (the same for every set)")
    disjoint: bool = Field(True, description="no sample in two sets")
    seed: int = Field(0, description="seed of the draws")
    clusters: Optional[int] = Field(None, ge=2, description="K of the gradient clusterings of cluster designs "
                                    "(None: about sqrt of the candidates)")
    max_steps: int = Field(40, ge=1, description="SFT steps per student (the same for every set)")
    batch_size: int = Field(8, ge=1, description="SFT samples per step per process")
    learning_rate: float = Field(1e-4, gt=0)
    save_steps: int = Field(20, ge=1, description="a student's checkpoint cadence: a killed study resumes its "
                            "student from the last one")
    keep_models: bool = Field(False, description="keep each student's weights after its evaluation (else only "
                              "its results are kept; ~0.5 GB per SmolLM2 student)")
    engine: EngineConfig = Field(EngineConfig(backend="transformers"),
                                 description="how students answer the held-out problems (`model` is ignored)")
    eval_per_family: int = Field(12, ge=1, description="held-out problems per family and split")
    ood_families: tuple[str, ...] = Field(
        ("chain_sum", "products", "spell_backward", "fraction_simplification"),
        description="tasks no set contains: the out-of-distribution split")
    eval_seed: int = Field(20_011, description="seed of the held-out problems (never a pool seed)")
    max_tokens: int = Field(32, ge=1, description="answer tokens per held-out problem")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples of the sets for rho's 95% interval")
    bootstrap_seed: int = 0

    @field_validator("designs")
    @classmethod
    def _designs_parse(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from prismatic_assets.core.study_sets import parse_designs

        parse_designs(value, key="designs")
        return value

    @model_validator(mode="after")
    def _families_apart(self) -> "StudyConfig":
        overlap = sorted(set(self.families) & set(self.ood_families))
        if overlap:
            raise ValueError(f"ood_families {overlap} are also pool families: the out-of-distribution split must "
                             "use tasks no set contains")
        if self.save_steps > self.max_steps:
            raise ValueError(f"save_steps={self.save_steps} > max_steps={self.max_steps}: a killed student could "
                             "not resume from a checkpoint; lower save_steps")
        return self


class TrackingConfig(_Block):
    tracking_uri: Optional[str] = Field(None, description="None: $MLFLOW_TRACKING_URI, else sqlite under data_dir")
    experiment: str = "prismatic"


class Config(_Block):
    profile: str = DEFAULT_PROFILE
    data_dir: str = "data"
    seed: SeedConfig = SeedConfig()
    proxy: ProxyConfig = ProxyConfig()
    projection: ProjectionConfig = ProjectionConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    score: ScoreConfig = ScoreConfig()
    compute: ComputeConfig = ComputeConfig()
    synthesis: SynthesisConfig = SynthesisConfig()
    distill: DistillConfig = DistillConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    compare: CompareConfig = CompareConfig()
    world: WorldConfig = WorldConfig()
    arms: ArmsConfig = ArmsConfig()
    study: StudyConfig = StudyConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("data_dir")
    @classmethod
    def _nonempty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("data_dir is empty: name a folder, e.g. data")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> "Config":
        if self.projection.kind == "rademacher" and self.proxy.device == "cpu" and self.proxy.params is None:
            raise ValueError("projection.kind=rademacher with proxy.device=cpu and every parameter: a dense "
                             "projection of ~1e8 dims takes minutes per sample on a CPU; set "
                             "projection.kind: countsketch, or restrict proxy.params, or use a GPU")
        offered = self.arms.requests_per_round * self.world.generator.new_per_request
        if self.arms.budget > offered:
            raise ValueError(f"arms.budget={self.arms.budget} > arms.requests_per_round x "
                             f"world.generator.new_per_request = {offered}: no arm could fill its budget; raise "
                             "arms.requests_per_round or lower arms.budget")
        overlap = sorted(set(self.world.families) & set(self.arms.experiment.ood_families))
        if overlap:
            raise ValueError(f"arms.experiment.ood_families {overlap} are also in world.families: the "
                             "out-of-distribution split must use tasks no arm is offered")
        if len(self.world.levels) < 2 and self.world.generator.neighbour_level > 0:
            raise ValueError(f"world.generator.neighbour_level={self.world.generator.neighbour_level} but "
                             f"world.levels={list(self.world.levels)} has one level: add a level, or set "
                             "neighbour_level to 0 and same_cell to match")
        return self

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def store_path(self) -> Path:
        return self.data_path / "prismatic.duckdb"

    def replace(self, **changes: Any) -> "Config":
        return self.model_copy(update=changes)


BlockT = TypeVar("BlockT", bound=BaseModel)


def with_overrides(block: BlockT, overrides: Mapping[str, Any]) -> BlockT:
    """`block` (a section of the config) with the overrides that are not None applied and validated:
    how a run's launchpad settings replace the profile's."""
    changes = {key: value for key, value in overrides.items() if value is not None}
    return type(block).model_validate({**block.model_dump(), **changes})


def _with(sampling: SamplingConfig, **changes: Any) -> SamplingConfig:
    import dataclasses

    return dataclasses.replace(sampling, **changes)


# -- loading -----------------------------------------------------------------------------
def profiles_dir() -> Path:
    """The folder holding the profile YAML files: resources/ of a source checkout, else the
    copy installed with the package (`prismatic_assets.profiles`)."""
    if (SOURCE_PROFILES_DIR.parent / "pyproject.toml").is_file() and SOURCE_PROFILES_DIR.is_dir():
        return SOURCE_PROFILES_DIR
    return Path(__file__).resolve().parents[1] / "profiles"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def profile_path(profile_or_path: str | None = None) -> Path:
    """The YAML file of a profile name or path; None: $PRISMATIC_PROFILE, else 'local'."""
    choice = profile_or_path or os.environ.get("PRISMATIC_PROFILE") or DEFAULT_PROFILE
    path = Path(choice)
    if path.suffix not in (".yaml", ".yml"):
        path = profiles_dir() / f"{choice}.yaml"
    if not path.is_file():
        raise ConfigError(f"profile {choice!r}: {path} not found; available profiles: {available_profiles()}, "
                          "or pass a path to a YAML file")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(values).__name__}")
    return values


def _explain(error: ValidationError, where: str) -> ConfigError:
    lines = []
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            parent = _model_at(Config, e["loc"][:-1])
            known = sorted(_field_names(parent)) if parent is not None else []
            lines.append(f"unknown key {key!r}; known keys here: {known}")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return ConfigError(f"{where}: " + "; ".join(lines))


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


def _field_names(model: Any) -> dict[str, Any]:
    return getattr(model, "model_fields", None) or getattr(model, "__dataclass_fields__", None) or {}


def _model_at(model: Any, loc: tuple) -> Any:
    """The model or dataclass type at a location of the Config tree (for error messages)."""
    for part in loc:
        field = _field_names(model).get(part)
        if field is None:
            return None
        model = getattr(field, "annotation", None) or getattr(field, "type", None)
        if isinstance(model, str):  # a dataclass annotation under `from __future__ import annotations`
            return None
    return model


def build_config(values: dict[str, Any], where: str = "<config>") -> Config:
    """A Config from a (partial) mapping of overrides; errors name `where`.

    Overrides are merged into the defaults key by key, so a profile that sets only
    `synthesis.problem_sampling.temperature` keeps the default top_p and max_tokens.
    """
    try:
        return Config.model_validate(_merge(Config().model_dump(), values))
    except ValidationError as exc:
        raise _explain(exc, where) from None


def _read_profile(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """A profile's overrides, following `extends: BASE`, and the file that set each key."""
    if path in seen:
        raise ConfigError(f"{path}: `extends` loops through {[str(p) for p in seen]}")
    values = _read_yaml(path)
    base_name = values.pop("extends", None)
    origins = {key: str(path) for key in _given_keys(values)}
    if base_name is None:
        return values, origins
    if not isinstance(base_name, str):
        raise ConfigError(f"{path}: extends={base_name!r}: name one profile, e.g. extends: paper")
    base_values, base_origins = _read_profile(profile_path(base_name), seen + (path,))
    return _merge(base_values, values), {**base_origins, **origins}


def load_config(profile_or_path: str | None = None) -> Config:
    """The config of a profile name ("local", "paper") or a YAML path.

    None means $PRISMATIC_PROFILE, else "local". A profile may start from another one with
    `extends: NAME`. $PRISMATIC_DATA_DIR, when set, replaces data_dir (tests and the demo
    point the whole lineage at a scratch folder this way).
    """
    path = profile_path(profile_or_path)
    values, _ = _read_profile(path)
    config = build_config(values, str(path))
    if os.environ.get("PRISMATIC_DATA_DIR"):
        config = config.replace(data_dir=os.environ["PRISMATIC_DATA_DIR"])
    return config


# -- describing --------------------------------------------------------------------------
def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    import dataclasses

    if isinstance(value, BaseModel):
        items = {name: getattr(value, name) for name in type(value).model_fields}
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for name, item in items.items():
        out.update(_flatten(item, f"{prefix}.{name}" if prefix else name))
    return out


def _given_keys(values: Any, prefix: str = "") -> set[str]:
    if not isinstance(values, dict):
        return {prefix}
    keys: set[str] = set()
    for name, item in values.items():
        keys |= _given_keys(item, f"{prefix}.{name}" if prefix else str(name))
    return keys


def describe(profile_or_path: str | None = None) -> list[tuple[str, Any, str]]:
    """(key, value, origin) for every setting of a profile: origin is the YAML file that set
    it, 'default' for the built-in default, or the environment variable that replaced it."""
    _, origins = _read_profile(profile_path(profile_or_path))
    config = load_config(profile_or_path)
    rows = []
    for key, value in _flatten(config).items():
        origin = next((origins[g] for g in origins if key == g or key.startswith(g + ".")), "default")
        if key == "data_dir" and os.environ.get("PRISMATIC_DATA_DIR"):
            origin = "$PRISMATIC_DATA_DIR"
        rows.append((key, value, origin))
    return rows


def defaults() -> list[tuple[str, Any]]:
    """Every setting with its built-in default, in declaration order."""
    return list(_flatten(Config()).items())


def defaults_markdown() -> str:
    """The documented defaults (docs/CONFIG.md is this text; a test keeps them equal)."""
    lines = ["# Configuration defaults", "",
             "Generated by `prismatic config show --defaults --markdown`; every profile overrides some of these.",
             "", "| key | default |", "|---|---|"]
    lines += [f"| `{key}` | `{value!r}` |" for key, value in defaults()]
    return "\n".join(lines) + "\n"
