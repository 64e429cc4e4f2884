"""Per-sample loss gradients of a proxy model, projected to a small fixed dimension.

For each (prompt, response) pair: format it with the proxy's chat template (user turn =
prompt, assistant turn = response), take the mean token cross-entropy over the response
tokens only (prompt tokens are masked), back-propagate one sample at a time with the model
in eval mode, and project the gradient of the selected parameters chunk by chunk (no
flattened copy of all parameters). The result is L2-normalized.

This module does not cache or store anything (the metadata store does), and it never
raises for a bad sample: zero, non-finite or empty gradients come back as an
`Embedding` with `error` set, so a data set with one broken row still gets a score.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from prismatic_assets.core.projection import Projector, ProjectionSpec, make_projector

#: Bump when the loss, masking or formatting changes: it is part of every cache key.
GRADIENT_ALGORITHM_VERSION = 1
IGNORE_INDEX = -100
AUTOCAST_CHOICES = (None, "bf16")


@dataclass(frozen=True)
class GradientSpec:
    """What, besides the model and projection, decides a gradient vector.

    `params`: None for every parameter (the paper), or a regular expression matched
    against parameter names (e.g. ``r"model\\.layers\\.(28|29)\\."`` for the last two
    layers of SmolLM2) to trade fidelity for speed. Parameters that do not match get no
    gradient, so back-propagation also stops early.
    `autocast`: None (fp32) or "bf16" (autocast forward and backward: faster on GPUs; on
    the 2-core CPU of benchmarks/ its backward was much slower than fp32).
    `max_length`: token budget; longer samples are truncated at the end of the response
    (recorded), a prompt that alone exceeds it is an error for that sample.
    """

    params: str | None = None
    autocast: str | None = None
    max_length: int = 2048

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST_CHOICES:
            raise ValueError(f"autocast={self.autocast!r}: choose one of {AUTOCAST_CHOICES}")
        if self.max_length < 8:
            raise ValueError(f"max_length={self.max_length}: must be at least 8 tokens")
        if self.params is not None:
            try:
                re.compile(self.params)
            except re.error as exc:
                raise ValueError(f"params={self.params!r} is not a valid regular expression: {exc}") from None

    def as_dict(self) -> dict:
        return {"params": self.params, "autocast": self.autocast, "max_length": self.max_length,
                "version": GRADIENT_ALGORITHM_VERSION}


def embedding_key(model_fingerprint: str, projection_key: str, gradient: GradientSpec) -> str:
    """The cache key shared by every vector computed with the same model, projection and spec."""
    payload = json.dumps({"model": model_fingerprint, "projection": projection_key,
                          "gradient": gradient.as_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class EncodedSample:
    input_ids: torch.Tensor  # (1, T)
    labels: torch.Tensor  # (1, T), IGNORE_INDEX on prompt and template tokens
    n_prompt_tokens: int
    n_response_tokens: int
    truncated: bool


class SampleError(ValueError):
    """A sample that cannot be turned into a gradient (recorded, never raised to the caller)."""


def _token_ids(encoded) -> list[int]:
    if hasattr(encoded, "keys"):  # BatchEncoding
        encoded = encoded["input_ids"]
    return list(encoded)


def encode_chat_sample(tokenizer, prompt: str, response: str, max_length: int = 2048) -> EncodedSample:
    """Tokenize with the chat template; label only the assistant turn's tokens.

    Tokens the template appends after the end-of-turn token (a trailing newline in ChatML)
    are not the response and are masked too.
    """
    user = [{"role": "user", "content": prompt}]
    prefix = _token_ids(tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True))
    full = _token_ids(tokenizer.apply_chat_template(
        user + [{"role": "assistant", "content": response}], tokenize=True))
    if full[: len(prefix)] != prefix:
        raise SampleError("the chat template does not render the prompt as a prefix of the full "
                          "conversation, so response tokens cannot be located")
    response_ids = full[len(prefix):]
    eos = tokenizer.eos_token_id
    if eos is not None and eos in response_ids:
        last_eos = len(response_ids) - 1 - response_ids[::-1].index(eos)
        response_ids = response_ids[: last_eos + 1]
    if len(prefix) >= max_length:
        raise SampleError(f"the prompt alone is {len(prefix)} tokens, over max_length={max_length}")
    truncated = len(prefix) + len(response_ids) > max_length
    response_ids = response_ids[: max_length - len(prefix)]
    if not response_ids:
        raise SampleError("the response has no tokens")
    ids = prefix + response_ids
    labels = [IGNORE_INDEX] * len(prefix) + response_ids
    return EncodedSample(
        input_ids=torch.tensor([ids], dtype=torch.long),
        labels=torch.tensor([labels], dtype=torch.long),
        n_prompt_tokens=len(prefix),
        n_response_tokens=len(response_ids),
        truncated=truncated,
    )


def response_loss(model, encoded: EncodedSample) -> torch.Tensor:
    """Mean cross-entropy over the labelled (response) tokens, computed in fp32."""
    device = next(model.parameters()).device
    input_ids = encoded.input_ids.to(device)
    labels = encoded.labels.to(device)
    logits = model(input_ids=input_ids).logits  # (1, T, V)
    # Token t predicts token t+1.
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="mean")


def select_parameters(model, pattern: str | None) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters whose name matches `pattern` (all when None), in the model's fixed order."""
    named = list(model.named_parameters())
    if pattern is None:
        return named
    regex = re.compile(pattern)
    chosen = [(name, p) for name, p in named if regex.search(name)]
    if not chosen:
        examples = ", ".join(name for name, _ in named[:4])
        raise ValueError(f"params={pattern!r} matches no parameter of the model; names look like: {examples}")
    return chosen


@dataclass(frozen=True)
class Embedding:
    """One sample's projected gradient (unit length) or the reason there is none."""

    vector: np.ndarray | None  # (d,) float32, L2-normalized
    grad_norm: float  # norm of the projected gradient before normalization
    loss: float
    n_response_tokens: int
    truncated: bool
    seconds: float
    error: str | None = None


class GradientEmbedder:
    """Computes projected response-only gradients with one model, projection and spec.

    Construction freezes everything the vectors depend on; `key` is the cache key.
    """

    def __init__(self, model, tokenizer, projection: ProjectionSpec, gradient: GradientSpec,
                 model_fingerprint: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.gradient = gradient
        self.model.eval()  # the paper: eval mode, so dropout does not make gradients random
        self.params = select_parameters(model, gradient.params)
        chosen = {id(p) for _, p in self.params}
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen)
        self.input_dim = sum(p.numel() for _, p in self.params)
        self.device = next(model.parameters()).device
        self.projector: Projector = make_projector(projection, self.input_dim, device=str(self.device))
        self.projection_key = self.projector.key
        self.model_fingerprint = model_fingerprint
        self.key = embedding_key(model_fingerprint, self.projection_key, gradient)

    def _autocast(self):
        if self.gradient.autocast == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def embed(self, prompt: str, response: str) -> Embedding:
        start = time.perf_counter()
        try:
            encoded = encode_chat_sample(self.tokenizer, prompt, response, self.gradient.max_length)
        except SampleError as exc:
            return Embedding(None, 0.0, float("nan"), 0, False, time.perf_counter() - start, str(exc))
        self.model.zero_grad(set_to_none=True)
        with self._autocast():
            loss = response_loss(self.model, encoded)
        loss_value = float(loss.detach())
        if not np.isfinite(loss_value):
            return Embedding(None, 0.0, loss_value, encoded.n_response_tokens, encoded.truncated,
                             time.perf_counter() - start, f"non-finite loss ({loss_value})")
        loss.backward()
        chunks = []
        for name, p in self.params:
            # A parameter the loss does not reach (possible with a subset) has no gradient: zeros.
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            chunks.append(grad.reshape(-1))
        projected = self.projector.project(chunks)  # (d,)
        self.model.zero_grad(set_to_none=True)
        vector = projected.double().numpy()
        norm = float(np.linalg.norm(vector))
        seconds = time.perf_counter() - start
        if not np.all(np.isfinite(vector)):
            return Embedding(None, norm, loss_value, encoded.n_response_tokens, encoded.truncated, seconds,
                             "non-finite gradient")
        if norm == 0.0:
            return Embedding(None, 0.0, loss_value, encoded.n_response_tokens, encoded.truncated, seconds,
                             "zero gradient")
        return Embedding((vector / norm).astype(np.float32), norm, loss_value, encoded.n_response_tokens,
                         encoded.truncated, seconds)
