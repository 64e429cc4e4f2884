"""Response-only gradients: masking, determinism, parameter subsets, error rows, cache keys."""

from __future__ import annotations

import math
import re
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from prismatic_assets.core.gradient_memory import MemoryBudget
from prismatic_assets.core.gradients import (
    IGNORE_INDEX,
    GradientEmbedder,
    GradientSpec,
    SampleError,
    embedding_key,
    encode_chat_sample,
    response_loss,
    select_parameters,
)
from prismatic_assets.core.models import model_fingerprint
from prismatic_assets.core.projection import ProjectionSpec
from tests.conftest import make_tiny_llama, make_tiny_qwen2

PROMPT = "Find all integers n such that n^2 + 1 is divisible by n + 1."
RESPONSE = "Since n^2 + 1 = (n + 1)(n - 1) + 2, n + 1 divides 2, so n is in {-3, -2, 0, 1}."


def _embedder(model, tokenizer, projection=ProjectionSpec(dim=64), gradient=GradientSpec()):
    return GradientEmbedder(model, tokenizer, projection, gradient, model_fingerprint(model, tokenizer))


def test_only_the_assistant_turn_is_labelled(packaged_tokenizer):
    enc = encode_chat_sample(packaged_tokenizer, PROMPT, RESPONSE)
    labels = enc.labels[0].tolist()
    ids = enc.input_ids[0].tolist()
    assert labels[: enc.n_prompt_tokens] == [IGNORE_INDEX] * enc.n_prompt_tokens
    response_ids = labels[enc.n_prompt_tokens:]
    assert response_ids == ids[enc.n_prompt_tokens:]
    text = packaged_tokenizer.decode(response_ids)
    assert text.startswith(RESPONSE) and text.endswith(packaged_tokenizer.eos_token)
    assert enc.n_response_tokens == len(response_ids)


def test_the_prompt_is_the_user_turn_and_the_response_the_assistant_turn(packaged_tokenizer):
    enc = encode_chat_sample(packaged_tokenizer, PROMPT, RESPONSE)
    ids = enc.input_ids[0].tolist()
    assert packaged_tokenizer.decode(ids[: enc.n_prompt_tokens]).endswith(
        f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n")
    assert packaged_tokenizer.decode(ids[enc.n_prompt_tokens:]) == RESPONSE + "<|im_end|>"


def test_a_template_without_an_end_of_turn_token_keeps_every_response_token(packaged_tokenizer):
    import copy

    plain = copy.deepcopy(packaged_tokenizer)
    plain.chat_template = ("{% for m in messages %}{{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}"
                           "{% if add_generation_prompt %}assistant:\n{% endif %}")
    enc = encode_chat_sample(plain, PROMPT, RESPONSE)
    assert plain.eos_token_id not in enc.input_ids[0].tolist()
    assert plain.decode(enc.input_ids[0, enc.n_prompt_tokens:].tolist()) == RESPONSE + "\n"


def test_max_length_counts_prompt_and_response_tokens_at_its_bounds(packaged_tokenizer):
    whole = encode_chat_sample(packaged_tokenizer, PROMPT, RESPONSE, max_length=10_000)
    n, prompt = whole.input_ids.shape[1], whole.n_prompt_tokens
    exact = encode_chat_sample(packaged_tokenizer, PROMPT, RESPONSE, max_length=n)
    assert not exact.truncated and torch.equal(exact.input_ids, whole.input_ids)
    short = encode_chat_sample(packaged_tokenizer, PROMPT, RESPONSE, max_length=n - 1)
    assert short.truncated and short.n_response_tokens == n - 1 - prompt
    one = encode_chat_sample(packaged_tokenizer, PROMPT, RESPONSE, max_length=prompt + 1)
    assert one.truncated and one.n_response_tokens == 1
    with pytest.raises(SampleError, match=f"the prompt alone is {prompt} tokens"):
        encode_chat_sample(packaged_tokenizer, PROMPT, RESPONSE, max_length=prompt)


def test_loss_is_mean_cross_entropy_over_response_tokens(packaged_tokenizer, tiny_llama):
    enc = encode_chat_sample(packaged_tokenizer, PROMPT, RESPONSE)
    with torch.no_grad():
        loss = response_loss(tiny_llama, enc)
        logp = torch.log_softmax(tiny_llama(input_ids=enc.input_ids).logits[0].float(), dim=-1)  # (T, V)
    ids = enc.input_ids[0]
    positions = range(enc.n_prompt_tokens, len(ids))  # tokens predicted from the previous position
    manual = -torch.stack([logp[t - 1, ids[t]] for t in positions]).mean()
    assert torch.allclose(loss, manual, atol=1e-5)


def test_prompt_positions_get_no_gradient_from_the_loss(packaged_tokenizer, tiny_llama):
    """d loss / d logits is zero wherever the next token is a (masked) prompt token."""
    enc = encode_chat_sample(packaged_tokenizer, PROMPT, RESPONSE)
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["logits"] = output

    handle = tiny_llama.lm_head.register_forward_hook(keep)
    try:
        response_loss(tiny_llama, enc).backward()
    finally:
        handle.remove()
    grad = captured["logits"].grad[0]  # (T, V)
    per_position = grad.abs().sum(-1)
    assert torch.all(per_position[: enc.n_prompt_tokens - 1] == 0)
    assert torch.all(per_position[enc.n_prompt_tokens - 1: -1] > 0)
    assert per_position[-1] == 0  # the last position predicts nothing


def test_prompt_changes_the_gradient_only_through_context(packaged_tokenizer, tiny_llama):
    a = encode_chat_sample(packaged_tokenizer, PROMPT, RESPONSE)
    b = encode_chat_sample(packaged_tokenizer, PROMPT + " Show your work.", RESPONSE)
    # The same tokens are predicted...
    assert a.labels[0, a.n_prompt_tokens:].tolist() == b.labels[0, b.n_prompt_tokens:].tolist()
    # ...but from another context, so the vector moves.
    embedder = _embedder(tiny_llama, packaged_tokenizer)
    va = embedder.embed(PROMPT, RESPONSE).vector
    vb = embedder.embed(PROMPT + " Show your work.", RESPONSE).vector
    assert not np.allclose(va, vb)


def test_same_sample_same_vector_across_embedders(packaged_tokenizer):
    first = _embedder(make_tiny_llama(packaged_tokenizer, seed=0), packaged_tokenizer).embed(PROMPT, RESPONSE)
    second = _embedder(make_tiny_llama(packaged_tokenizer, seed=0), packaged_tokenizer).embed(PROMPT, RESPONSE)
    np.testing.assert_array_equal(first.vector, second.vector)
    assert first.error is None and abs(np.linalg.norm(first.vector) - 1) < 1e-5
    assert first.grad_norm > 0 and np.isfinite(first.loss)


def test_embedding_key_changes_with_model_projection_and_gradient_spec(packaged_tokenizer):
    base = _embedder(make_tiny_llama(packaged_tokenizer, seed=0), packaged_tokenizer)
    other_model = _embedder(make_tiny_llama(packaged_tokenizer, seed=1), packaged_tokenizer)
    other_projection = _embedder(make_tiny_llama(packaged_tokenizer, seed=0), packaged_tokenizer,
                                 projection=ProjectionSpec(dim=64, seed=1))
    other_gradient = _embedder(make_tiny_llama(packaged_tokenizer, seed=0), packaged_tokenizer,
                               gradient=GradientSpec(max_length=512))
    keys = {base.key, other_model.key, other_projection.key, other_gradient.key}
    assert len(keys) == 4
    assert base.key == embedding_key(base.model_fingerprint, base.projection_key, GradientSpec())


@pytest.mark.parametrize("spec_change", [
    {"params": r"layers\.1\."},
    {"autocast": "bf16"},
    {"max_length": 60},  # the prompt is 50 tokens: truncates the response
])
def test_each_gradient_parameter_changes_the_vector(packaged_tokenizer, spec_change):
    base = _embedder(make_tiny_llama(packaged_tokenizer), packaged_tokenizer).embed(PROMPT, RESPONSE)
    changed = _embedder(make_tiny_llama(packaged_tokenizer), packaged_tokenizer,
                        gradient=GradientSpec(**spec_change)).embed(PROMPT, RESPONSE)
    assert changed.error is None
    assert not np.allclose(base.vector, changed.vector, atol=1e-4)


def test_parameter_subset_restricts_dimension_and_disables_other_gradients(packaged_tokenizer, tiny_llama):
    embedder = _embedder(tiny_llama, packaged_tokenizer, gradient=GradientSpec(params=r"layers\.1\."))
    names = [name for name, _ in embedder.params]
    assert names and all("layers.1." in name for name in names)
    assert embedder.input_dim == sum(p.numel() for _, p in embedder.params)
    assert not tiny_llama.model.embed_tokens.weight.requires_grad
    with pytest.raises(ValueError, match="matches no parameter"):
        select_parameters(tiny_llama, r"does-not-exist")


def test_truncation_is_recorded(packaged_tokenizer, tiny_llama):
    embedder = _embedder(tiny_llama, packaged_tokenizer, gradient=GradientSpec(max_length=60))
    out = embedder.embed(PROMPT, RESPONSE * 4)
    assert out.truncated and out.error is None


@pytest.mark.parametrize("prompt,response,max_length,expected", [
    ("x " * 400, "short answer", 64, "the prompt alone"),
    ("a problem", "", 256, None),  # an empty response still has the end-of-turn token to predict
])
def test_bad_samples_become_recorded_errors_not_crashes(packaged_tokenizer, tiny_llama, prompt, response,
                                                        max_length, expected):
    embedder = _embedder(tiny_llama, packaged_tokenizer, gradient=GradientSpec(max_length=max_length))
    out = embedder.embed(prompt, response)
    if expected is None:
        assert out.error is None
    else:
        assert out.vector is None and expected in out.error


def test_zero_gradient_is_an_error_row(packaged_tokenizer, tiny_llama):
    with torch.no_grad():
        for p in tiny_llama.parameters():
            p.zero_()  # uniform logits over the vocabulary: every selected weight gets zero gradient
    out = _embedder(tiny_llama, packaged_tokenizer, gradient=GradientSpec(params=r"layers\.0\.self_attn")).embed(
        PROMPT, RESPONSE)
    assert out.vector is None and out.error == "zero gradient"


def test_invalid_gradient_spec_names_the_fix():
    with pytest.raises(ValueError, match="autocast"):
        GradientSpec(autocast="fp8")
    with pytest.raises(ValueError, match="regular expression"):
        GradientSpec(params="(")


# -- batched per-sample gradients --------------------------------------------------------------
PAIRS = [
    (PROMPT, RESPONSE),
    ("What is 2 + 2?", "4"),
    ("x " * 400, "the prompt alone is over max_length"),  # an error row amid the batch
    ("Prove that there are infinitely many primes.", "Suppose finitely many; multiply them and add one. " * 3),
    ("a problem", ""),  # only the end-of-turn token to predict
    (PROMPT + " Show your work.", RESPONSE),
]


def _budgeted(model, tokenizer, budget: int | None, projection=ProjectionSpec(dim=64)) -> GradientEmbedder:
    """An embedder of 96-token samples planning within `budget` bytes (None: no budget), nothing resident."""
    memory = None if budget is None else MemoryBudget(budget, resident=lambda: 0)
    return GradientEmbedder(model, tokenizer, projection, GradientSpec(max_length=96), "fp", memory=memory)


def _assert_same_embeddings(many, one, atol=1e-5):
    assert len(many) == len(one)
    for m, o in zip(many, one):
        assert m.error == o.error
        if o.vector is None:  # an error row: the same figures as far as the sample got
            assert m.vector is None
            assert (m.grad_norm, m.n_response_tokens, m.truncated) == (o.grad_norm, o.n_response_tokens, o.truncated)
            assert m.loss == o.loss or (math.isnan(m.loss) and math.isnan(o.loss))
            continue
        # Unit vectors: entries ~0.1; rtol 1e-5 plus an absolute floor for entries near zero.
        np.testing.assert_allclose(m.vector, o.vector, rtol=1e-5, atol=atol)
        assert m.loss == pytest.approx(o.loss, rel=1e-5)
        assert m.grad_norm == pytest.approx(o.grad_norm, rel=1e-5)
        assert (m.n_response_tokens, m.truncated) == (o.n_response_tokens, o.truncated)


@pytest.mark.parametrize("kind, params, cache_bytes, batch_size", [
    ("countsketch", None, None, 4),  # all parameters, tied embeddings: the paper's setting
    ("countsketch", None, None, 1),  # one sample per step through the same hooks
    ("countsketch", None, 0, 4),  # bucket ids hashed per block instead of held
    ("rademacher", r"layers\.", None, 4),  # dense signs cached as int8
    ("rademacher", r"layers\.1\.", 0, 4),  # dense signs regenerated, several blocks per weight
])
def test_embed_many_equals_embed_one_at_a_time(packaged_tokenizer, kind, params, cache_bytes, batch_size):
    from prismatic_assets.core.projection import make_projector

    model = make_tiny_llama(packaged_tokenizer)
    embedder = _embedder(model, packaged_tokenizer, projection=ProjectionSpec(kind, dim=64),
                         gradient=GradientSpec(params=params, max_length=96))
    if cache_bytes is not None:
        embedder.projector = make_projector(embedder.projector.spec, embedder.input_dim, cache_bytes=cache_bytes)
        assert not embedder.projector.cached
    one = [embedder.embed(p, r) for p, r in PAIRS]
    many = embedder.embed_many(PAIRS, batch_size=batch_size)
    assert embedder.batched_unsupported is None
    _assert_same_embeddings(many, one)
    assert one[2].error and "prompt alone" in one[2].error
    # The batched path leaves the model as the one-at-a-time path expects it.
    chosen = {id(p) for _, p in embedder.params}
    assert [p.requires_grad for p in model.parameters()] == [id(p) in chosen for p in model.parameters()]
    assert all(p.grad is None for p in model.parameters())


def test_embed_many_with_biases_and_untied_embeddings(packaged_tokenizer):
    """Qwen2 shapes: biased q/k/v projections and a separate output matrix."""
    model = make_tiny_qwen2(packaged_tokenizer)
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    embedder = _embedder(model, packaged_tokenizer, gradient=GradientSpec(max_length=96))
    _assert_same_embeddings(embedder.embed_many(PAIRS, batch_size=6), [embedder.embed(p, r) for p, r in PAIRS])


def test_batching_and_token_budget_change_nothing_but_speed(packaged_tokenizer, tiny_llama):
    embedder = _embedder(tiny_llama, packaged_tokenizer, gradient=GradientSpec(max_length=96))
    base = embedder.embed_many(PAIRS, batch_size=6)
    for kwargs in ({"batch_size": 2}, {"batch_size": 6, "max_batch_tokens": 100}):
        _assert_same_embeddings(embedder.embed_many(PAIRS, **kwargs), base)
    assert embedder.embed_many([], batch_size=4) == []
    with pytest.raises(ValueError, match="batch_size"):
        embedder.embed_many(PAIRS, batch_size=0)


def test_embed_many_in_bf16_autocast_stays_close(packaged_tokenizer, tiny_llama):
    embedder = _embedder(tiny_llama, packaged_tokenizer, gradient=GradientSpec(autocast="bf16", max_length=96))
    many = embedder.embed_many(PAIRS, batch_size=6)
    one = [embedder.embed(p, r) for p, r in PAIRS]
    for m, o in zip(many, one):
        if o.vector is not None:
            # bf16 products in other shapes round differently; the directions stay the same.
            assert float(m.vector @ o.vector) > 0.99


def test_embed_many_reports_zero_gradients_per_sample(packaged_tokenizer, tiny_llama):
    with torch.no_grad():
        for p in tiny_llama.parameters():
            p.zero_()
    embedder = _embedder(tiny_llama, packaged_tokenizer, gradient=GradientSpec(params=r"layers\.0\.self_attn"))
    out = embedder.embed_many(PAIRS[:2], batch_size=2)
    assert [o.error for o in out] == ["zero gradient", "zero gradient"]


# ----------------------------------------------------------------------------- edges the mutation run found


def test_the_embedding_key_format_is_pinned():
    """Stored vectors are found by this key: a change of its format silently recomputes every
    cache. The expected key is the sha256 of the JSON written out here by hand."""
    import hashlib

    from prismatic_assets.core.gradient_spec import GradientSpec, embedding_key

    spec = GradientSpec(params=r"layers\.1\.", autocast="bf16", max_length=256)
    assert spec.as_dict() == {"params": r"layers\.1\.", "autocast": "bf16", "max_length": 256, "version": 1}
    payload = ('{"gradient": {"autocast": "bf16", "max_length": 256, "params": "layers\\\\.1\\\\.", "version": 1}, '
               '"model": "fp-model", "projection": "proj-key"}')
    assert embedding_key("fp-model", "proj-key", spec) == hashlib.sha256(payload.encode()).hexdigest()[:32]


def test_max_length_of_8_tokens_is_the_smallest_allowed():
    from prismatic_assets.core.gradient_spec import GradientSpec

    assert GradientSpec(max_length=8).max_length == 8
    with pytest.raises(ValueError, match="max_length=7: must be at least 8 tokens"):
        GradientSpec(max_length=7)


class _SlowTokenizer:
    """The packaged tokenizer, 0.1 s slower at each chat template (two per sample)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def apply_chat_template(self, *args, **kwargs):
        time.sleep(0.1)
        return self.inner.apply_chat_template(*args, **kwargs)


def test_every_row_carries_its_figures_and_a_time_that_counts_its_encoding(packaged_tokenizer, tiny_llama):
    """A row that cannot be encoded, a computed one and one with a non-finite loss: each field as
    the sample gives it, and each row's seconds from before its encoding (0.2 s here) to its end."""
    embedder = GradientEmbedder(tiny_llama, _SlowTokenizer(packaged_tokenizer), ProjectionSpec(dim=64),
                                GradientSpec(max_length=64), "fp")
    encoded = encode_chat_sample(packaged_tokenizer, PROMPT, RESPONSE * 2, 64)
    assert encoded.truncated
    began = time.perf_counter()
    too_long = embedder.embed("x " * 400, "short")
    computed = embedder.embed(PROMPT, RESPONSE * 2)
    wall = time.perf_counter() - began
    row = too_long
    assert (row.vector, row.grad_norm, row.n_response_tokens, row.truncated) == (None, 0.0, 0, False)
    assert math.isnan(too_long.loss) and too_long.error.startswith("the prompt alone is")
    assert computed.error is None and computed.grad_norm > 0 and np.isfinite(computed.loss)
    assert (computed.n_response_tokens, computed.truncated) == (encoded.n_response_tokens, True)
    assert 0.2 <= too_long.seconds and 0.2 <= computed.seconds and too_long.seconds + computed.seconds <= wall
    with torch.no_grad():
        tiny_llama.model.norm.weight.fill_(float("nan"))
    began = time.perf_counter()
    broken = embedder.embed(PROMPT, RESPONSE * 2)
    assert (broken.vector, broken.grad_norm, broken.error) == (None, 0.0, "non-finite loss (nan)")
    assert math.isnan(broken.loss) and (broken.n_response_tokens, broken.truncated) == (encoded.n_response_tokens, True)
    assert 0.2 <= broken.seconds <= time.perf_counter() - began


class _TwoInputLayer(torch.nn.Module):
    """A causal LM (position-wise) with a layer of two inputs: its forward cannot be replayed per sample."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.mix, self.out = (torch.nn.Embedding(vocab, 8), torch.nn.Bilinear(8, 8, 8),
                                          torch.nn.Linear(8, vocab))
        self.config = SimpleNamespace(vocab_size=vocab)

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        h = self.embed(input_ids)
        return SimpleNamespace(logits=self.out(self.mix(h, h)))


def _embedding_with_max_norm(tokenizer):
    model = make_tiny_llama(tokenizer)
    model.model.embed_tokens.max_norm = 1e6  # never reached, but the hooks cannot replay a renormalizing embedding
    return model


@pytest.mark.parametrize("make, reason", [
    (_embedding_with_max_norm, "embedding model.embed_tokens uses max_norm"),  # found when the hooks are made
    (lambda tok: _TwoInputLayer(len(tok)), "module mix (Bilinear) owns selected parameters and takes more than one "
                                           "input"),  # found in the first step
])
@pytest.mark.parametrize("budget", [None, 400_000_000], ids=["no-budget", "budget"])
def test_a_model_the_hooks_cannot_take_is_embedded_one_sample_at_a_time(packaged_tokenizer, make, reason, budget):
    embedder = _budgeted(make(packaged_tokenizer), packaged_tokenizer, budget)
    one = [embedder.embed(p, r) for p, r in PAIRS]
    said = r"batched gradients are not available for this model \(" + re.escape(reason)
    with pytest.warns(RuntimeWarning, match=said) as record:
        many = embedder.embed_many(PAIRS, batch_size=3)
    _assert_same_embeddings(many, one)
    assert [str(w.message) for w in record if "not available" in str(w.message)] == [
        f"batched gradients are not available for this model ({embedder.batched_unsupported}); embedding one "
        "sample at a time"]  # said once, with its reason, and never tried batched after
    assert embedder.batched_unsupported is not None and embedder.batched_unsupported.startswith(reason)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the next call goes one at a time without trying again
        _assert_same_embeddings(embedder.embed_many(PAIRS, batch_size=3), one)


def test_a_budgeted_plan_that_falls_back_keeps_the_token_cap(packaged_tokenizer):
    embedder = _budgeted(_TwoInputLayer(len(packaged_tokenizer)), packaged_tokenizer, 400_000_000)
    lengths = {}
    for i, (prompt, response) in enumerate(PAIRS):
        try:
            lengths[i] = encode_chat_sample(packaged_tokenizer, prompt, response, 96).input_ids.shape[1]
        except SampleError:
            continue
    cap = 2 * min(lengths.values()) - 1  # no two samples fit together under it
    with pytest.warns(RuntimeWarning, match="module mix"):
        plan = embedder.plan(PAIRS, batch_size=3, max_batch_tokens=cap)  # the probe finds the two-input layer
    assert sorted(p.indices for p in plan) == [(i,) for i in sorted(lengths)]
    assert [p.tokens for p in plan] == [lengths[p.indices[0]] for p in plan]
    assert sorted(len(p.indices) for p in embedder.plan(PAIRS, batch_size=3))[-1] == 3  # without the cap: batches of 3


@pytest.mark.parametrize("kind", ["rademacher", "countsketch"])
def test_the_step_cost_counts_the_projections_working_memory_at_the_step_batch(packaged_tokenizer, kind):
    costs = {}
    for batch in (1, 2, 8):
        embedder = _budgeted(make_tiny_llama(packaged_tokenizer), packaged_tokenizer, 400_000_000,
                             ProjectionSpec(dim=64, kind=kind))
        embedder.batch_size = batch
        costs[batch] = embedder.step_cost().projection
    if kind == "rademacher":  # a block of each sample's values per step: linear in the batch
        assert 0 < costs[1] < costs[2] and costs[8] - costs[1] == 7 * (costs[2] - costs[1])
    else:  # hash buffers of a fixed block, whatever the batch
        assert costs[1] == costs[2] == costs[8] > 0


def test_a_pattern_matching_no_parameter_names_the_first_four_parameters(tiny_llama):
    first = [name for name, _ in tiny_llama.named_parameters()][:4]
    with pytest.raises(ValueError, match=re.escape(f"names look like: {', '.join(first)}") + "$"):
        select_parameters(tiny_llama, r"no_such_parameter")


def test_a_memory_budget_sizes_the_projection_cache_and_the_gradient_blocks(packaged_tokenizer):
    """A quarter of the budget at most for the projection's cached signs (2 GiB without a budget) and
    1/32 of it for a block of per-sample gradients (1 MiB to 256 MiB), in whole bytes."""
    MB, GB = 2**20, 2**30
    for budget, cache, block in ((None, 2 * GB, 256 * MB), (400 * MB + 7, (400 * MB + 7) // 4, (400 * MB + 7) // 32),
                                 (64 * GB, 2 * GB, 256 * MB)):
        embedder = _budgeted(make_tiny_llama(packaged_tokenizer), packaged_tokenizer, budget)
        assert embedder.projector.cache_bytes == cache
        assert embedder.step_cost().block_cap == block and isinstance(embedder.step_cost().block_cap, int)


def test_a_step_holds_eight_samples_unless_the_call_says(packaged_tokenizer, tiny_llama):
    embedder = _embedder(tiny_llama, packaged_tokenizer, gradient=GradientSpec(max_length=96))
    pairs = [(f"What is {i} + {i}?", str(2 * i)) for i in range(20)]
    assert sorted(len(p.indices) for p in embedder.plan(pairs)) == [4, 8, 8]
    assert embedder.last_plan == []  # no embed_many call yet: no steps taken
    assert sorted(len(p.indices) for p in embedder.plan(pairs, batch_size=5)) == [5, 5, 5, 5]


def test_a_tokenizer_without_pad_and_end_tokens_still_batches(packaged_tokenizer, tiny_llama):
    """Padding goes where the attention mask and the labels drop it: any id does, 0 when the
    tokenizer names neither a pad nor an end token."""
    import copy

    bare = copy.deepcopy(packaged_tokenizer)
    bare.pad_token = bare.eos_token = None
    embedder = _embedder(tiny_llama, bare, gradient=GradientSpec(max_length=96))
    one = [embedder.embed(p, r) for p, r in PAIRS]
    _assert_same_embeddings(embedder.embed_many(PAIRS, batch_size=3), one)
    assert any(len(p.indices) > 1 for p in embedder.last_plan)  # steps of samples of other lengths: padded


def test_a_selected_parameter_the_loss_does_not_reach_counts_as_zeros(packaged_tokenizer, tiny_llama):
    tiny_llama.model.unused = torch.nn.Linear(3, 2)  # never called: no gradient reaches it
    embedder = _embedder(tiny_llama, packaged_tokenizer, gradient=GradientSpec(params=r"unused|layers\.1\.mlp",
                                                                              max_length=96))
    assert [name for name, _ in embedder.params][-2:] == ["model.unused.weight", "model.unused.bias"]
    one = [embedder.embed(p, r) for p, r in PAIRS]
    assert sum(o.error is None for o in one) == 5
    assert all(p.grad is None for p in tiny_llama.parameters())  # nothing left behind
    _assert_same_embeddings(embedder.embed_many(PAIRS, batch_size=3), one)
    assert all(p.grad is None for p in tiny_llama.parameters())


def test_a_step_of_several_samples_times_each_row_as_its_share_and_keeps_error_rows_whole(packaged_tokenizer,
                                                                                          tiny_llama):
    """One step of four samples: each row's seconds is a quarter of the step's, within the call;
    a non-finite loss gives each row the one-at-a-time error row's figures."""
    pairs = [PAIRS[0], PAIRS[1], PAIRS[3], PAIRS[5]]
    embedder = _embedder(tiny_llama, packaged_tokenizer, gradient=GradientSpec(max_length=64))
    began = time.perf_counter()
    *rows, too_long = embedder.embed_many(pairs + [PAIRS[2]], batch_size=4)
    wall = time.perf_counter() - began
    assert len(embedder.last_plan) == 1 and all(r.error is None for r in rows)
    assert len({r.seconds for r in rows}) == 1 and 0 < 4 * rows[0].seconds <= wall
    assert too_long.error.startswith("the prompt alone is") and 0 <= too_long.seconds <= wall - 4 * rows[0].seconds
    with torch.no_grad():
        tiny_llama.model.norm.weight.fill_(float("nan"))
    one = [embedder.embed(p, r) for p, r in pairs]
    many = embedder.embed_many(pairs, batch_size=4)
    assert [o.error for o in one] == [m.error for m in many] == ["non-finite loss (nan)"] * 4
    for o, m in zip(one, many, strict=True):
        assert (m.vector, m.grad_norm) == (None, 0.0)
        assert (m.n_response_tokens, m.truncated) == (o.n_response_tokens, o.truncated)
        assert math.isnan(m.loss) and m.seconds >= 0
    assert {o.truncated for o in one} == {False, True}  # both kinds of row


def test_one_samples_non_finite_loss_spoils_no_other_row_of_its_step(packaged_tokenizer):
    """A token whose input embedding is NaN appears in one sample only (the output matrix is its
    own, so no logit is NaN): that row is an error, the other rows of the same step are the
    one-at-a-time vectors."""
    model = make_tiny_qwen2(packaged_tokenizer)
    pairs = [(PROMPT, RESPONSE), ("What is 2 + 2?", "4"), ("Name a colour.", "Purple.")]
    ids = [set(encode_chat_sample(packaged_tokenizer, p, r, 96).input_ids[0].tolist()) for p, r in pairs]
    (token, *_) = sorted(ids[2] - ids[0] - ids[1])
    with torch.no_grad():
        model.model.embed_tokens.weight[token] = float("nan")
    embedder = _embedder(model, packaged_tokenizer, gradient=GradientSpec(max_length=96))
    one = [embedder.embed(p, r) for p, r in pairs]
    assert [o.error for o in one] == [None, None, "non-finite loss (nan)"]
    _assert_same_embeddings(embedder.embed_many(pairs, batch_size=3), one)
    assert len(embedder.last_plan) == 1


def test_a_model_without_logits_to_keep_slices_its_logits_itself(packaged_tokenizer):
    from tests.core.test_gradient_memory import _Plain

    embedder = GradientEmbedder(_Plain(make_tiny_llama(packaged_tokenizer)), packaged_tokenizer,
                                ProjectionSpec(dim=64), GradientSpec(max_length=96), "fp")
    assert not embedder._keeps_logits
    _assert_same_embeddings(embedder.embed_many(PAIRS, batch_size=3), [embedder.embed(p, r) for p, r in PAIRS])
    assert embedder.batched_unsupported is None


def test_embed_many_takes_a_whole_positive_batch_size_and_a_positive_token_cap(packaged_tokenizer, tiny_llama):
    embedder = _embedder(tiny_llama, packaged_tokenizer, gradient=GradientSpec(max_length=96))
    for cap in (0, -5):
        with pytest.raises(ValueError, match=f"max_batch_tokens must be positive or None, got {cap}"):
            embedder.embed_many(PAIRS, max_batch_tokens=cap)
    for size in (True, 2.0, "4", 0):
        with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {size!r}"):
            embedder.embed_many(PAIRS, batch_size=size)
    one = [embedder.embed(p, r) for p, r in PAIRS]
    _assert_same_embeddings(embedder.embed_many(PAIRS, max_batch_tokens=1), one)  # one sample per step
    assert [len(p.indices) for p in embedder.last_plan] == [1] * 5


def test_a_projected_gradient_becomes_a_unit_vector_or_an_error_row():
    from prismatic_assets.core.gradients import EncodedSample, _finish

    encoded = EncodedSample(torch.zeros(1, 9, dtype=torch.long), torch.zeros(1, 9, dtype=torch.long), 5, 4, True)
    row = _finish(np.array([3.0, -4.0]), 2.5, encoded, 0.25)
    assert (row.grad_norm, row.loss, row.n_response_tokens, row.truncated, row.seconds, row.error) == \
        (5.0, 2.5, 4, True, 0.25, None)
    assert row.vector.dtype == np.float32 and row.vector.tolist() == [0.6000000238418579, -0.800000011920929]
    for vector, norm, error in (([0.0, 0.0], 0.0, "zero gradient"), ([1.0, np.nan], np.nan, "non-finite gradient"),
                                ([np.inf, 1.0], np.inf, "non-finite gradient")):
        row = _finish(np.array(vector), 2.5, encoded, 0.25)
        assert (row.vector, row.loss, row.n_response_tokens, row.truncated, row.seconds, row.error) == \
            (None, 2.5, 4, True, 0.25, error)
        assert row.grad_norm == norm or (np.isnan(norm) and np.isnan(row.grad_norm))
