"""Per-sample loss gradients of a proxy model, projected to a small fixed dimension.

For each (prompt, response) pair: format it with the proxy's chat template (user turn =
prompt, assistant turn = response), take the mean token cross-entropy over the response
tokens only (prompt tokens are masked), with the model in eval mode, and project the
gradient of the selected parameters. The result is L2-normalized.

Two ways to the same vectors:
- `GradientEmbedder.embed`: one sample per forward and backward, the gradient projected
  chunk by chunk from `.grad` (the reference).
- `GradientEmbedder.embed_many`: B samples per step. One right-padded forward (logits only
  where a response token is predicted) and one backward of the summed per-sample losses;
  hooks (`core/per_sample.py`) rebuild each sample's gradient block by block and project
  each block at once, so the projection's random block is made once for B samples and no
  full gradient is ever held. Padding changes nothing: a causal model never lets a real
  token see a pad, and pads carry no label. Equal to `embed` within float32 round-off.

This module does not cache or store anything (the metadata store does), and it never
raises for a bad sample: zero, non-finite or empty gradients come back as an
`Embedding` with `error` set, so a data set with one broken row still gets a score.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import re
import time
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from prismatic_assets.core.per_sample import PerSampleGradients, UnsupportedModule
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

    The defaults are the profile defaults of `proxy.params`, `proxy.autocast` and
    `proxy.max_length` (tests/infra/test_defaults.py keeps them equal: core reads no config).
    """

    params: str | None = None
    autocast: str | None = None
    max_length: int = 1024

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


def encode_chat_sample(tokenizer, prompt: str, response: str,
                       max_length: int = GradientSpec.max_length) -> EncodedSample:
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
        #: Samples per step of `embed_many` when the call does not say (does not change vectors).
        self.batch_size = 8
        self._per_sample: PerSampleGradients | None = None
        self.batched_unsupported: str | None = None  # why embed_many falls back to one at a time
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_id = int(pad) if pad is not None else 0

    @property
    def dim(self) -> int:
        """The projected dimension d of every vector."""
        return self.projector.spec.dim

    def _autocast(self):
        if self.gradient.autocast == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def embed(self, prompt: str, response: str) -> Embedding:
        """One sample's embedding: its own forward and backward (the reference for `embed_many`)."""
        start = time.perf_counter()
        try:
            encoded = encode_chat_sample(self.tokenizer, prompt, response, self.gradient.max_length)
        except SampleError as exc:
            return Embedding(None, 0.0, float("nan"), 0, False, time.perf_counter() - start, str(exc))
        return self._embed_encoded(encoded, start)

    # -- batches ---------------------------------------------------------------------------
    def embed_many(self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None,
                   max_batch_tokens: int | None = None) -> list[Embedding]:
        """Embeddings of (prompt, response) pairs, in input order, `batch_size` samples per step.

        The same vectors as `embed` on each pair (float32: within round-off, rtol ~1e-5).
        batch_size None means `self.batch_size`. Samples are grouped by length so that
        batches pad little; `max_batch_tokens` caps batch_size x longest sample (activation
        memory). A model the hooks cannot handle falls back to one sample at a time, with a
        warning and `batched_unsupported` set.
        """
        batch_size = self.batch_size if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be positive or None, got {max_batch_tokens!r}")
        results: list[Embedding | None] = [None] * len(pairs)
        encoded: list[tuple[int, EncodedSample]] = []
        for i, (prompt, response) in enumerate(pairs):
            start = time.perf_counter()
            try:
                encoded.append((i, encode_chat_sample(self.tokenizer, prompt, response, self.gradient.max_length)))
            except SampleError as exc:
                results[i] = Embedding(None, 0.0, float("nan"), 0, False, time.perf_counter() - start, str(exc))
        encoded.sort(key=lambda item: -item[1].input_ids.shape[1])  # longest first
        batch: list[tuple[int, EncodedSample]] = []
        for item in encoded + [None]:
            if item is not None and batch:
                longest = batch[0][1].input_ids.shape[1]
                fits = len(batch) < batch_size and (
                    max_batch_tokens is None or (len(batch) + 1) * longest <= max_batch_tokens)
                if fits:
                    batch.append(item)
                    continue
            if batch:
                for (i, _), out in zip(batch, self._embed_batch([enc for _, enc in batch]), strict=True):
                    results[i] = out
                batch = []
            if item is not None:
                batch.append(item)
        return results  # type: ignore[return-value]

    def _embed_batch(self, encs: list[EncodedSample]) -> list[Embedding]:
        if self.batched_unsupported is None and self._per_sample is None:
            try:
                self._per_sample = PerSampleGradients(self.model, self.params)
            except UnsupportedModule as exc:
                self._fall_back(str(exc))
        if self.batched_unsupported is not None:
            return [self._embed_encoded(enc) for enc in encs]
        try:
            return self._embed_batch_hooks(encs)
        except UnsupportedModule as exc:
            self._fall_back(str(exc))
            return [self._embed_encoded(enc) for enc in encs]

    def _fall_back(self, reason: str) -> None:
        self.batched_unsupported = reason
        warnings.warn(f"batched gradients are not available for this model ({reason}); embedding one sample "
                      "at a time", RuntimeWarning, stacklevel=4)

    def _embed_encoded(self, encoded: EncodedSample, start: float | None = None) -> Embedding:
        start = time.perf_counter() if start is None else start
        self.model.zero_grad(set_to_none=True)
        with self._autocast():
            loss = response_loss(self.model, encoded)
        loss_value = float(loss.detach())
        if not np.isfinite(loss_value):
            return Embedding(None, 0.0, loss_value, encoded.n_response_tokens, encoded.truncated,
                             time.perf_counter() - start, f"non-finite loss ({loss_value})")
        loss.backward()
        # A parameter the loss does not reach (possible with a subset) has no gradient: zeros.
        chunks = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for _, p in self.params]
        projected = self.projector.project(chunks)  # (d,)
        self.model.zero_grad(set_to_none=True)
        return _finish(projected.double().numpy(), loss_value, encoded, time.perf_counter() - start)

    def _embed_batch_hooks(self, encs: list[EncodedSample]) -> list[Embedding]:
        start = time.perf_counter()
        batch = len(encs)
        lengths = [e.input_ids.shape[1] for e in encs]
        longest = max(lengths)
        ids = torch.full((batch, longest), self._pad_id, dtype=torch.long)  # (B, T), right-padded
        labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros(batch, longest, dtype=torch.long)
        for b, enc in enumerate(encs):
            ids[b, : lengths[b]] = enc.input_ids[0]
            labels[b, : lengths[b]] = enc.labels[0]
            mask[b, : lengths[b]] = 1
        # Position t predicts token t + 1: logits are needed from the first response
        # token's predecessor on, never for the last position.
        first = min(e.n_prompt_tokens for e in encs) - 1
        keep = torch.arange(first, longest - 1, device=self.device)  # (K,)
        targets = labels[:, first + 1:].to(self.device)  # (B, K)
        kwargs = {"input_ids": ids.to(self.device), "use_cache": False}
        if min(lengths) != longest:
            kwargs["attention_mask"] = mask.to(self.device)
        sink = _ProjectingSink(self.projector, batch)
        self.model.zero_grad(set_to_none=True)
        with self._per_sample.attach(sink, batch):
            with self._autocast():
                if self._keeps_logits:
                    logits = self.model(**kwargs, logits_to_keep=keep).logits  # (B, K, V)
                else:
                    logits = self.model(**kwargs).logits[:, first:longest - 1]
                per_token = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                            ignore_index=IGNORE_INDEX, reduction="none").view(batch, -1)
                losses = per_token.sum(1) / (targets != IGNORE_INDEX).sum(1)  # (B,) mean over response tokens
            finite = torch.isfinite(losses.detach())
            total = losses[finite].sum()
            if total.requires_grad:
                total.backward()  # the hooks project every sample's gradient into sink.acc
        vectors = sink.acc.to("cpu", torch.float64).numpy()  # (B, d)
        loss_values = losses.detach().to("cpu", torch.float64).tolist()
        seconds = (time.perf_counter() - start) / batch
        out = []
        for b, enc in enumerate(encs):
            if not finite[b]:
                out.append(Embedding(None, 0.0, loss_values[b], enc.n_response_tokens, enc.truncated, seconds,
                                     f"non-finite loss ({loss_values[b]})"))
            else:
                out.append(_finish(vectors[b], loss_values[b], enc, seconds))
        return out


class _ProjectingSink:
    """Adds each per-sample gradient piece's projection into a (B, d) accumulator on the device."""

    def __init__(self, projector: Projector, batch: int) -> None:
        self.projector = projector
        self.acc = torch.zeros(batch, projector.spec.dim, dtype=torch.float32, device=projector.device)

    def dense(self, values: torch.Tensor, offset: int) -> None:
        self.acc += self.projector.project_slice(values, offset)

    def rows(self, values: torch.Tensor, rows: torch.Tensor, offset: int) -> None:
        self.acc += self.projector.project_rows(values, rows, offset)


def _finish(vector: np.ndarray, loss_value: float, encoded: EncodedSample, seconds: float) -> Embedding:
    """The Embedding of a projected gradient: normalized, or an error row if zero or non-finite."""
    norm = float(np.linalg.norm(vector))
    if not np.all(np.isfinite(vector)):
        return Embedding(None, norm, loss_value, encoded.n_response_tokens, encoded.truncated, seconds,
                         "non-finite gradient")
    if norm == 0.0:
        return Embedding(None, 0.0, loss_value, encoded.n_response_tokens, encoded.truncated, seconds,
                         "zero gradient")
    return Embedding((vector / norm).astype(np.float32), norm, loss_value, encoded.n_response_tokens,
                     encoded.truncated, seconds)
