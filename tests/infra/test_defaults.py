"""One source per default: the config models. Every other default of the same setting equals it.

The API, the CLI and the pipeline read their defaults from the config models, so these tests
catch a literal that slips back in. The core reads no config (it is imported by it): its
dataclass and function defaults are compared here instead.
"""

from __future__ import annotations

import inspect
import math

import pytest

from prismatic_assets.core.clustering import spherical_kmeans
from prismatic_assets.core.diversity import mean_pooled_hidden_states
from prismatic_assets.core.gradients import GradientSpec, encode_chat_sample
from prismatic_assets.core.models import load_causal_lm
from prismatic_assets.core.projection import ProjectionSpec
from prismatic_assets.core.selection import cluster_in_batches
from prismatic_assets.infra.config import (
    ClusteringConfig,
    CompareConfig,
    ComputeConfig,
    ProjectionConfig,
    ProxyConfig,
    ScoreConfig,
)
from prismatic_assets.interfaces import api
from prismatic_assets.interfaces.cli import build_parser

PROXY, PROJECTION, COMPARE = ProxyConfig(), ProjectionConfig(), CompareConfig()


def _default(fn, name: str):
    return inspect.signature(fn).parameters[name].default


def test_core_dataclasses_default_to_the_config():
    assert GradientSpec() == GradientSpec(params=PROXY.params, autocast=PROXY.autocast, max_length=PROXY.max_length)
    assert ProjectionSpec() == ProjectionSpec(kind=PROJECTION.kind, dim=PROJECTION.dim, seed=PROJECTION.seed)


@pytest.mark.parametrize("fn, name, expected", [
    (encode_chat_sample, "max_length", PROXY.max_length),
    (mean_pooled_hidden_states, "max_length", PROXY.max_length),
    (mean_pooled_hidden_states, "batch_size", ComputeConfig().batch_size),
    (load_causal_lm, "dtype", PROXY.dtype),
    (load_causal_lm, "device", PROXY.device),
    (load_causal_lm, "trust_remote_code", PROXY.trust_remote_code),
    (spherical_kmeans, "niter", ClusteringConfig().niter),
    (spherical_kmeans, "sparse_ratio", ClusteringConfig().sparse_ratio),
    (cluster_in_batches, "niter", ClusteringConfig().niter),
])
def test_core_function_defaults_are_the_configs(fn, name, expected):
    assert _default(fn, name) == expected


def test_the_local_embedder_batches_as_the_config_says(tiny_embedder):
    assert tiny_embedder.gradients.batch_size == ComputeConfig().batch_size


PROXY_OPTIONS = {"model": PROXY.model, "device": PROXY.device, "params": PROXY.params, "max_length": PROXY.max_length,
                 "projection": PROJECTION.kind, "dim": PROJECTION.dim, "projection_seed": PROJECTION.seed,
                 "trust_remote_code": PROXY.trust_remote_code}


@pytest.mark.parametrize("fn", [api.proxy_embedder, api.score_samples, api.score_dataset, api.compare_datasets,
                                api.select_subset])
def test_api_defaults_are_the_configs(fn):
    for name, expected in {**PROXY_OPTIONS, "dtype": PROXY.dtype, "autocast": PROXY.autocast}.items():
        assert _default(fn, name) == expected, name


def test_compare_and_score_api_defaults_are_the_configs():
    assert _default(api.score_dataset, "q") == ScoreConfig().q
    assert _default(api.select_subset, "q") == ScoreConfig().q
    assert _default(api.compare_datasets, "qs") == COMPARE.qs
    assert _default(api.compare_datasets, "cluster_seed") == COMPARE.cluster_seed
    assert _default(api.compare_datasets, "examples") == COMPARE.examples
    assert _default(api.compare_datasets, "batch_size") == ComputeConfig().batch_size


@pytest.mark.parametrize("command", [["score", "x.jsonl"], ["compare", "a.jsonl", "b.jsonl"],
                                     ["select", "x.jsonl", "--k", "2", "--out", "o.jsonl"]])
def test_cli_proxy_options_default_to_the_config(command):
    args = build_parser().parse_args(command)
    for name, expected in PROXY_OPTIONS.items():
        assert getattr(args, name) == expected, name
    assert args.bf16 is False and PROXY.autocast is None  # --bf16 off is autocast None


def test_each_seed_has_one_name():
    parser = build_parser()
    compare = parser.parse_args(["compare", "a", "b", "--cluster-seed", "3", "--projection-seed", "4"])
    assert (compare.cluster_seed, compare.projection_seed) == (3, 4)
    select = parser.parse_args(["select", "x", "--k", "2", "--out", "o", "--selection-seed", "5"])
    assert select.selection_seed == 5
    for command in (["score", "x"], ["compare", "a", "b"], ["select", "x", "--k", "2", "--out", "o"]):
        with pytest.raises(SystemExit):
            parser.parse_args(command + ["--seed", "1"])  # no option means two things


def test_cli_compare_defaults_are_the_configs():
    args = build_parser().parse_args(["compare", "a", "b"])
    assert [float(q) for q in args.q.split(",")] == list(COMPARE.qs) and math.isinf(COMPARE.qs[-1])
    assert (args.cluster_seed, args.examples, args.clusters) == (COMPARE.cluster_seed, COMPARE.examples,
                                                                 COMPARE.clusters)
    assert args.batch_size == ComputeConfig().batch_size
    assert build_parser().parse_args(["score", "x"]).q == ScoreConfig().q
