"""Held-out evaluation of a (student) model: problem sets, the prompt, scoring and reports.

What it does:
- `gsm_symbolic_set` builds a GSM8K-style held-out set offline with reasoning-gym's
  `gsm_symbolic` generator (integer answers); `load_eval_file` reads an evaluation file
  (JSON Lines, a JSON array or Parquet with problem/answer fields).
- `assert_disjoint` refuses an evaluation set that shares a problem (normalized text) with
  the training data, naming the overlapping ids.
- `evaluate` asks a generator (anything with `chat(conversations, sampling)`, see
  `generation.py`) to solve every problem with `EVAL_PROMPT`, and scores each response with
  `score_response`: the last ``\\boxed{}`` answer compared with the gold answer by
  math-verify (`answers.py`). The `EvalReport` keeps every response, its extracted answer
  and verdict (the evidence) next to the accuracies (the decision), per benchmark and
  overall.

What it does not: load or start models (the caller passes a generator), track results
(see `tracking.py`), or decontaminate near-duplicates (exact normalized text only; n-gram
decontamination lives in `decontamination.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prismatic_assets.core.answers import answers_equivalent, extract_answer
from prismatic_assets.core.samples import Sample, normalize_text

__all__ = [
    "EVAL_PROMPT",
    "EVAL_PROMPT_VERSION",
    "EvalRecord",
    "EvalReport",
    "OverlapError",
    "assert_disjoint",
    "build_eval_prompt",
    "combine_reports",
    "evaluate",
    "gsm_symbolic_set",
    "load_eval_file",
    "score_response",
]

#: The one evaluation prompt: the problem, then the step-by-step / boxed-answer instruction
#: (the Qwen2.5-Math wording used across math reasoning evaluations).
EVAL_PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
#: Bump when EVAL_PROMPT or scoring changes; reports carry it, so old numbers stay labelled.
EVAL_PROMPT_VERSION = 1

GSM_SYMBOLIC = "gsm_symbolic"
# reasoning-gym appends its own answer-format instruction; EVAL_PROMPT gives ours.
_GSM_SUFFIX = re.compile(r"\s*Give the result as your final answer\. Do not include units\.\s*$")
_INTEGER = re.compile(r"-?\d+")
_GSM_FINAL = re.compile(r"\n?####\s*(.+?)\s*$")


class ChatGenerator(Protocol):
    """What `evaluate` needs: `generation.Generator` satisfies it."""

    def chat(self, conversations: Sequence[Sequence[dict[str, str]]], sampling: Any) -> list[list[str]]: ...


def build_eval_prompt(problem: str) -> str:
    """The user message for one problem."""
    return EVAL_PROMPT.format(problem=problem.strip())


# ---------------------------------------------------------------------------- held-out sets


def gsm_symbolic_set(n: int = 50, seed: int = 1234) -> list[Sample]:
    """`n` GSM8K-style problems with integer answers from reasoning-gym's `gsm_symbolic`.

    Generated offline and deterministic: the same seed gives the same problems, and a larger
    `n` extends a smaller one (reasoning-gym 0.1.x supports only difficulty 1.0, so there is
    no difficulty knob). Ids are ``gsm_symbolic:<seed>:<i>`` with reasoning-gym's index i;
    the rare problem with a non-integer answer (e.g. 1687.5) is skipped, so ids can have
    gaps. The answer is the integer as a string; the response is the reference solution
    with its final ``#### x`` line written as ``\\boxed{x}``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: the number of problems must be an int >= 1")
    try:
        import reasoning_gym
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("reasoning-gym is missing: pip install reasoning-gym") from e

    # Entry i depends only on (seed, i), not on the dataset size, so over-generating is safe.
    size = n + 8 + n // 10
    data = reasoning_gym.create_dataset(GSM_SYMBOLIC, size=size, seed=seed)
    samples: list[Sample] = []
    for i in range(size):
        if len(samples) == n:
            break
        entry = data[i]
        meta = entry.get("metadata", {})
        answer = str(entry["answer"]).strip()
        if not _INTEGER.fullmatch(answer):
            continue
        cot = str(meta.get("answer_cot", "")).strip()
        response = _GSM_FINAL.sub("", cot).strip()
        response = f"{response}\nThe final answer is \\boxed{{{answer}}}." if response else f"\\boxed{{{answer}}}"
        samples.append(Sample(
            sample_id=f"{GSM_SYMBOLIC}:{seed}:{i}",
            prompt=_GSM_SUFFIX.sub("", entry["question"]).strip(),
            response=response,
            answer=answer,
            category=GSM_SYMBOLIC,
            source=f"reasoning_gym:{GSM_SYMBOLIC}",
            source_ref=f"{GSM_SYMBOLIC}:seed={seed}:{i}",
            meta={"seed": seed, "index": i,
                  "reasoning_gym_version": getattr(reasoning_gym, "__version__", "unknown")},
        ))
    if len(samples) < n:
        raise RuntimeError(f"reasoning-gym gave only {len(samples)} integer-answer problems in {size} "
                           f"(seed={seed}); ask for fewer or change the seed")
    return samples


def load_eval_file(
    path: str | Path,
    problem_field: str = "problem",
    answer_field: str = "answer",
    id_field: str | None = None,
    source: str | None = None,
    limit: int | None = None,
) -> list[Sample]:
    """Read evaluation problems from ``.jsonl``, ``.json`` (JSON Lines or an array) or ``.parquet``.

    Each record needs a non-empty `problem_field` and `answer_field` (numbers are turned
    into strings: ``3.0`` -> ``"3"``). Sample ids are ``<source>:<id>`` when `id_field` is
    given, else ``<source>:<row>`` (1-based); `source` defaults to the file stem. The
    response of an evaluation sample is empty: only the problem and answer are used.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation file {path} not found (working directory {Path.cwd()})")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit={limit!r}: must be None or an int >= 1")
    source = source if source is not None else path.stem
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for row_no, record in _read_records(path):
        where = f"evaluation file {path} row {row_no}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object with {problem_field!r} and {answer_field!r}, "
                             f"got {type(record).__name__}")
        problem = _text(record, problem_field, where)
        answer = _text(record, answer_field, where)
        ident = str(_text(record, id_field, where)) if id_field else str(row_no)
        sample_id = f"{source}:{ident}"
        if sample_id in seen:
            raise ValueError(f"{where}: id {sample_id!r} repeats row {seen[sample_id]}; make {id_field!r} unique")
        seen[sample_id] = row_no
        samples.append(Sample(sample_id=sample_id, prompt=problem, response="", answer=answer,
                              source=source, source_ref=f"{path}:{row_no}"))
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        raise ValueError(f"evaluation file {path} has no records")
    return samples


def _text(record: dict[str, Any], key: str, where: str) -> str:
    if key not in record or record[key] is None:
        raise ValueError(f"{where}: missing field {key!r} (fields present: {sorted(record)}); "
                         "pass problem_field=/answer_field= to name the right ones")
    value = record[key]
    if isinstance(value, bool):
        raise ValueError(f"{where}: field {key!r} is a boolean, expected text or a number")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field {key!r} must be non-empty text, got {value!r:.60}")
    return value


def _read_records(path: Path) -> Iterable[tuple[int, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import polars as pl

        for i, row in enumerate(pl.read_parquet(path).iter_rows(named=True), start=1):
            yield i, row
        return
    if suffix not in (".jsonl", ".json"):
        raise ValueError(f"evaluation file {path}: unsupported extension {path.suffix!r}; "
                         "use .jsonl, .json or .parquet")
    text = path.read_text(encoding="utf-8")
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"evaluation file {path}: not valid JSON ({e})") from None
        yield from enumerate(rows, start=1)
        return
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"evaluation file {path} line {i}: not valid JSON ({e.msg})") from None


# ---------------------------------------------------------------------------- overlap guard


class OverlapError(ValueError):
    """Evaluation problems that also occur in the training data."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs
        shown = ", ".join(f"{e} = {t}" for e, t in pairs[:10])
        more = f" and {len(pairs) - 10} more" if len(pairs) > 10 else ""
        super().__init__(
            f"{len(pairs)} evaluation problem(s) also occur in the training data (eval id = train id): "
            f"{shown}{more}. Remove them from the training samples (or pick another held-out set/seed) "
            "before training: an overlapping evaluation measures memorization."
        )


def assert_disjoint(eval_samples: Sequence[Sample], train_samples: Sequence[Sample]) -> None:
    """Raise `OverlapError` when an evaluation problem's normalized text is a training problem's.

    Normalization folds case, Unicode form and whitespace (`samples.normalize_text`).
    """
    train_by_text: dict[str, str] = {}
    for s in train_samples:
        train_by_text.setdefault(normalize_text(s.prompt), s.sample_id)
    pairs = [(e.sample_id, train_by_text[k]) for e in eval_samples
             if (k := normalize_text(e.prompt)) in train_by_text]
    if pairs:
        raise OverlapError(pairs)


# ---------------------------------------------------------------------------- scoring


def score_response(response: str, gold: str, *, stated_answers: bool = False) -> tuple[str | None, bool]:
    """(extracted answer, correct) for one response: the last complete ``\\boxed{}`` vs `gold`.

    No box (or a cut-off last box) is (None, False); with `stated_answers`, a response
    without any box may state its answer in words instead ("The answer is 12.").
    Equivalent forms count as correct (``0.5`` = ``\\frac{1}{2}``), as decided by
    `answers.answers_equivalent`.
    """
    extracted = extract_answer(response, stated=stated_answers)
    if extracted is None or not gold or not gold.strip():
        return extracted, False
    return extracted, answers_equivalent(extracted, gold)


@dataclass(frozen=True)
class EvalRecord:
    """One response to one problem, with its score (`completion` indexes n > 1 samples)."""

    sample_id: str
    benchmark: str
    completion: int
    problem: str
    response: str
    extracted: str | None
    gold: str
    correct: bool


@dataclass(frozen=True)
class EvalReport:
    """Every scored response and the accuracies derived from them.

    `accuracy[benchmark]`: the mean of `correct` over that benchmark's records (with n > 1
    completions per problem this is mean@n, the usual pass@1 estimate). `overall`: the mean
    over all records (micro average). `macro`: the mean of the per-benchmark accuracies.
    `model`, `sampling`, `prompt_version` record what produced the numbers.
    """

    records: tuple[EvalRecord, ...]
    accuracy: dict[str, float]
    problems: dict[str, int]
    overall: float
    macro: float
    model: str = ""
    sampling: dict[str, Any] = field(default_factory=dict)
    prompt_version: int = EVAL_PROMPT_VERSION

    @classmethod
    def from_records(cls, records: Iterable[EvalRecord], model: str = "",
                     sampling: dict[str, Any] | None = None) -> EvalReport:
        records = tuple(records)
        by_bench: dict[str, list[EvalRecord]] = {}
        for r in records:
            by_bench.setdefault(r.benchmark, []).append(r)
        accuracy = {b: sum(r.correct for r in rs) / len(rs) for b, rs in by_bench.items()}
        problems = {b: len({r.sample_id for r in rs}) for b, rs in by_bench.items()}
        overall = sum(r.correct for r in records) / len(records) if records else 0.0
        macro = sum(accuracy.values()) / len(accuracy) if accuracy else 0.0
        return cls(records, accuracy, problems, overall, macro, model, dict(sampling or {}))

    def metrics(self) -> dict[str, float]:
        """Flat numbers for a tracker: ``accuracy/<benchmark>``, ``accuracy/overall``, ...."""
        out: dict[str, float] = {f"accuracy/{b}": a for b, a in sorted(self.accuracy.items())}
        out.update({f"problems/{b}": float(n) for b, n in sorted(self.problems.items())})
        out["accuracy/overall"] = self.overall
        out["accuracy/macro"] = self.macro
        out["answered/overall"] = (sum(r.extracted is not None for r in self.records) / len(self.records)
                                   if self.records else 0.0)
        return out

    def rows(self) -> list[dict[str, Any]]:
        """The records as plain dicts (for a DataFrame, a table or a JSON artifact)."""
        return [asdict(r) for r in self.records]


def combine_reports(reports: Sequence[EvalReport]) -> EvalReport:
    """One report over several benchmarks' reports (they must come from the same model)."""
    models = {r.model for r in reports}
    if len(models) > 1:
        raise ValueError(f"combine_reports: reports come from different models {sorted(models)}; "
                         "combine the reports of one model at a time")
    records = [rec for r in reports for rec in r.records]
    return EvalReport.from_records(records, model=models.pop() if models else "",
                                   sampling=reports[0].sampling if reports else None)


def evaluate(generator: ChatGenerator, samples: Sequence[Sample], sampling: Any, benchmark: str, *,
             stated_answers: bool = False,
             scorer: Callable[[Sample, str], tuple[str | None, bool]] | None = None) -> EvalReport:
    """Solve every sample's problem with `generator` and score it against `sample.answer`.

    `sampling` is a `generation.SamplingConfig` (its `n` completions per problem are all
    scored); use temperature 0 for a greedy, reproducible evaluation. `benchmark` labels the
    records. Every sample needs a gold answer. `stated_answers`: see `score_response`.
    `scorer(sample, response) -> (extracted, correct)` replaces `score_response` where a
    task grades its own answers (procedural tasks: `core.procedural.score_item`).
    """
    if not benchmark:
        raise ValueError("benchmark is empty: name the evaluation set, e.g. 'gsm_symbolic'")
    missing = [s.sample_id for s in samples if not (s.answer and s.answer.strip())]
    if missing:
        raise ValueError(f"{len(missing)} evaluation sample(s) have no gold answer, e.g. {missing[:5]}; "
                         "evaluate only samples with an answer")
    conversations = [[{"role": "user", "content": build_eval_prompt(s.prompt)}] for s in samples]
    outputs = generator.chat(conversations, sampling) if conversations else []
    if len(outputs) != len(samples):
        raise RuntimeError(f"generator returned {len(outputs)} result lists for {len(samples)} problems")
    records = []
    for s, responses in zip(samples, outputs):
        for j, response in enumerate(responses):
            extracted, correct = (scorer(s, response) if scorer is not None else
                                  score_response(response, s.answer or "", stated_answers=stated_answers))
            records.append(EvalRecord(s.sample_id, benchmark, j, s.prompt, response, extracted,
                                      s.answer or "", correct))
    sampling_dict = sampling.as_dict() if hasattr(sampling, "as_dict") else (
        asdict(sampling) if hasattr(sampling, "__dataclass_fields__") else {})
    return EvalReport.from_records(records, model=str(getattr(generator, "model_name", "")),
                                   sampling=sampling_dict)
