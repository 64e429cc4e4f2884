"""Response-only gradients: masking, determinism, parameter subsets, error rows, cache keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prismatic_assets.core.gradients import (IGNORE_INDEX, GradientEmbedder, GradientSpec, embedding_key,
                                             encode_chat_sample, response_loss, select_parameters)
from prismatic_assets.core.models import model_fingerprint
from prismatic_assets.core.projection import ProjectionSpec
from tests.conftest import make_tiny_llama

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
    out = _embedder(tiny_llama, packaged_tokenizer, gradient=GradientSpec(max_length=max_length)).embed(prompt, response)
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
