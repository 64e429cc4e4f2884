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

With a memory budget (`MemoryBudget`, the config's `compute.memory_gb`) the steps are
planned to fit it (core/gradient_memory.py): samples per step follow from their lengths
and the model's measured cost per token; a step may compute its logits in chunks of
positions (the output head split from the model, one backward per chunk into the hidden
states, then one through the model) and recompute its last decoder blocks in backward.
None of that changes a vector beyond float32 round-off.

This module does not cache or store anything (the metadata store does), and it never
raises for a bad sample: zero, non-finite or empty gradients come back as an
`Embedding` with `error` set, so a data set with one broken row still gets a score.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import time
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from prismatic_assets.core.gradient_memory import (
    PROBE_BATCH,
    PROBE_LENGTHS,
    KeptBytes,
    MemoryBudget,
    PlannedBatch,
    Polynomial,
    StepCost,
    fit_polynomial,
    plan_batches,
    release_freed_memory,
    resident_bytes,
    unbudgeted_batches,
)
from prismatic_assets.core.gradient_spec import (  # noqa: F401  (re-exported: the spec is part of this API)
    AUTOCAST_CHOICES,
    GRADIENT_ALGORITHM_VERSION,
    Embedding,
    GradientSpec,
    embedding_key,
)
from prismatic_assets.core.per_sample import DEFAULT_BLOCK_BYTES, PerSampleGradients, UnsupportedModule
from prismatic_assets.core.projection import DEFAULT_CACHE_BYTES, ProjectionSpec, Projector, make_projector

IGNORE_INDEX = -100


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


class GradientEmbedder:
    """Computes projected response-only gradients with one model, projection and spec.

    Construction freezes everything the vectors depend on; `key` is the cache key.
    `memory`: the budget `embed_many` plans its steps within (None: `batch_size` samples per
    step, whatever they cost). It also caps the projection table (a quarter of the budget)
    and the per-sample gradient blocks (1/32): neither changes a vector.
    """

    def __init__(self, model, tokenizer, projection: ProjectionSpec, gradient: GradientSpec,
                 model_fingerprint: str, memory: MemoryBudget | None = None) -> None:
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
        self.memory = memory
        cache = DEFAULT_CACHE_BYTES if memory is None else min(DEFAULT_CACHE_BYTES, memory.total_bytes // 4)
        self.projector: Projector = make_projector(projection, self.input_dim, device=str(self.device),
                                                   cache_bytes=cache)
        self.projection_key = self.projector.key
        self.model_fingerprint = model_fingerprint
        self.key = embedding_key(model_fingerprint, self.projection_key, gradient)
        #: Samples per step of `embed_many` when the call does not say (does not change vectors).
        self.batch_size = 8
        self._per_sample: PerSampleGradients | None = None
        self._block_bytes = DEFAULT_BLOCK_BYTES if memory is None else min(
            DEFAULT_BLOCK_BYTES, max(1 << 20, memory.total_bytes // 32))
        self.batched_unsupported: str | None = None  # why embed_many falls back to one at a time
        self._cost: StepCost | None = None
        self._head: tuple | None | bool = False  # (decoder, head) once checked; None: not separable
        #: The steps of the last `embed_many` call (which samples, padded length, how), for reports.
        self.last_plan: list[PlannedBatch] = []
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
        """Embeddings of (prompt, response) pairs, in input order, several samples per step.

        The same vectors as `embed` on each pair (float32: within round-off, rtol ~1e-5).
        At most `batch_size` samples per step (None: `self.batch_size`) and `max_batch_tokens`
        padded tokens; samples are grouped by length so that steps pad little. With a memory
        budget the steps are planned to fit it (see `plan`; `MemoryBudgetError` for a sample
        that cannot fit), and memory freed by a step is handed back before the next. A model
        the hooks cannot handle falls back to one sample at a time, with a warning and
        `batched_unsupported` set. `last_plan` holds the steps taken.
        """
        batch_size = self._check_batching(batch_size, max_batch_tokens)
        results: list[Embedding | None] = [None] * len(pairs)
        encoded: list[tuple[int, EncodedSample]] = []
        for i, (prompt, response) in enumerate(pairs):
            start = time.perf_counter()
            try:
                encoded.append((i, encode_chat_sample(self.tokenizer, prompt, response, self.gradient.max_length)))
            except SampleError as exc:
                results[i] = Embedding(None, 0.0, float("nan"), 0, False, time.perf_counter() - start, str(exc))
        plans = self._plan([enc for _, enc in encoded], batch_size, max_batch_tokens)
        self.last_plan = [PlannedBatch(tuple(encoded[k][0] for k in p.indices), p.tokens, p.positions, p.recompute,
                                       p.logit_chunk, p.predicted_bytes) for p in plans]
        for planned in plans:
            outcomes = self._embed_batch([encoded[k][1] for k in planned.indices], planned)
            for k, out in zip(planned.indices, outcomes, strict=True):
                results[encoded[k][0]] = out
            if self.memory is not None:
                release_freed_memory()
        return results  # type: ignore[return-value]

    def plan(self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None,
             max_batch_tokens: int | None = None) -> list[PlannedBatch]:
        """The steps `embed_many` would take for these pairs (indices into `pairs`; pairs that
        fail to encode are left out), without computing anything but the step cost."""
        batch_size = self._check_batching(batch_size, max_batch_tokens)
        encoded = []
        for i, (prompt, response) in enumerate(pairs):
            try:
                encoded.append((i, encode_chat_sample(self.tokenizer, prompt, response, self.gradient.max_length)))
            except SampleError:
                continue
        return [PlannedBatch(tuple(encoded[k][0] for k in p.indices), p.tokens, p.positions, p.recompute,
                             p.logit_chunk, p.predicted_bytes)
                for p in self._plan([enc for _, enc in encoded], batch_size, max_batch_tokens)]

    def _check_batching(self, batch_size: int | None, max_batch_tokens: int | None) -> int:
        batch_size = self.batch_size if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be positive or None, got {max_batch_tokens!r}")
        return batch_size

    def _plan(self, encs: list[EncodedSample], batch_size: int, max_batch_tokens: int | None) -> list[PlannedBatch]:
        lengths = [e.input_ids.shape[1] for e in encs]
        prompts = [e.n_prompt_tokens for e in encs]
        if self.memory is None or not encs or not self._batched_available():
            return unbudgeted_batches(lengths, prompts, batch_size, max_batch_tokens)
        try:
            cost = self.step_cost()  # first: its forwards also page in every weight, which then counts as resident
        except UnsupportedModule as exc:  # a module the hooks cannot replay, met by the probe's forwards
            self._fall_back(str(exc))
            return unbudgeted_batches(lengths, prompts, batch_size, max_batch_tokens)
        release_freed_memory()
        resident = self.memory.resident() if self.memory.resident is not None else resident_bytes(self.device)
        return plan_batches(lengths, prompts, cost, self.memory.total_bytes, resident, batch_size, max_batch_tokens)

    @property
    def _batched(self) -> PerSampleGradients:
        """The per-sample gradient hooks, once `_batched_available()` said yes."""
        if self._per_sample is None:
            raise RuntimeError(f"no batched per-sample gradients: {self.batched_unsupported}")
        return self._per_sample

    def _batched_available(self) -> bool:
        if self.batched_unsupported is None and self._per_sample is None:
            try:
                self._per_sample = PerSampleGradients(self.model, self.params, block_bytes=self._block_bytes)
            except UnsupportedModule as exc:
                self._fall_back(str(exc))
        return self.batched_unsupported is None

    # -- memory ----------------------------------------------------------------------------
    def step_cost(self) -> StepCost:
        """What a step holds beyond the resident model, measured once on this model.

        Short forwards at PROBE_LENGTHS (two samples, one padded) count the bytes autograd
        saves and the hooks keep, per decoder block and outside the blocks; the logits and
        the fixed blocks follow from the vocabulary and the block sizes (see
        core/gradient_memory.py, where the model is checked against measured peaks).
        """
        if self._cost is not None:
            return self._cost
        if not self._batched_available():
            raise UnsupportedModule(f"no batched step to cost: {self.batched_unsupported}")
        psg = self._batched
        resident = [p for p in self.model.parameters()] + [b for b in self.model.buffers()]
        head = self._split_head()
        per_region: dict[int, list[float]] = {}
        inputs: dict[int, float] = {}
        hidden_bytes = 0.0
        for tokens in PROBE_LENGTHS:
            ids = torch.arange(PROBE_BATCH * tokens, device=self.device).reshape(PROBE_BATCH, tokens)
            ids = 3 + ids % max(1, int(self._vocab_size()) - 3)
            mask = torch.ones_like(ids)
            mask[1, tokens - 3:] = 0  # the second sample is padded: the masked attention path
            ids[1, tokens - 3:] = self._pad_id
            kept = KeptBytes(resident)
            with psg.attach(_NullSink(), PROBE_BATCH), psg.watching(kept.add), kept.recording(psg.blocks):
                with self._autocast():
                    if head is not None:
                        out = head[0](input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                        hidden_bytes = out.element_size() * out.shape[-1]
                    elif self._keeps_logits:
                        out = self.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1).logits
                    else:
                        out = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            del out
            for region in set(kept.bytes) | set(range(len(psg.blocks))) | {-1}:
                per_region.setdefault(region, []).append(kept.bytes.get(region, 0.0))
            inputs = {i: b / (PROBE_BATCH * tokens) for i, b in kept.inputs.items()}
        blocks = tuple(fit_polynomial(PROBE_LENGTHS, per_region[i], PROBE_BATCH) for i in range(len(psg.blocks)))
        other = fit_polynomial(PROBE_LENGTHS, per_region[-1], PROBE_BATCH)
        # The hidden states handed to the head, their chunked gradient and the full-size one.
        other = Polynomial(other.const, other.token + 3 * hidden_bytes, other.pair)
        self._cost = StepCost(blocks=blocks, block_inputs=tuple(inputs.get(i, 0.0) for i in range(len(blocks))),
                              other=other, logit_position=4.0 * self._vocab_size(),
                              sample_block=4.0 * max(p.numel() for _, p in self.params), block_cap=psg.block_bytes,
                              projection=self.projector.working_bytes(self.batch_size), split_head=head is not None,
                              can_recompute=bool(blocks) and self._recompute_works())
        return self._cost

    def _vocab_size(self) -> int:
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if head is not None and getattr(head, "weight", None) is not None:
            return int(head.weight.shape[0])
        return int(getattr(self.model.config, "vocab_size", len(self.tokenizer)))

    def _recompute_works(self) -> bool:
        """Whether the blocks can be recomputed (a probe forward with all of them wrapped)."""
        psg = self._batched
        psg.recompute_missed = None
        ids = torch.full((1, 8), 3, dtype=torch.long, device=self.device)
        with psg.attach(_NullSink(), 1, recompute=len(psg.blocks)), self._autocast():
            self.model(input_ids=ids, use_cache=False)
        if psg.recompute_missed:
            warnings.warn(f"decoder blocks cannot be recomputed in backward ({psg.recompute_missed}): long samples "
                          "need all their activations within the memory budget", RuntimeWarning, stacklevel=3)
            return False
        return True

    def _split_head(self):
        """(decoder, head) when logits(ids) == head(decoder(ids).last_hidden_state), else None.

        Checked once on a short input: a model that scales or caps its logits after the head
        fails the check and keeps computing all of a step's logits at once.
        """
        if self._head is not False:
            return self._head
        self._head = None
        get_head = getattr(self.model, "get_output_embeddings", None)
        head = get_head() if get_head is not None else None
        decoder = getattr(self.model, "base_model", None)
        if head is None or decoder is None or decoder is self.model:
            return None
        ids = (3 + torch.arange(6, device=self.device) % max(1, self._vocab_size() - 3)).unsqueeze(0)
        try:
            with torch.no_grad(), self._autocast():
                whole = self.model(input_ids=ids, use_cache=False).logits
                split = head(decoder(input_ids=ids, use_cache=False).last_hidden_state)
        except (TypeError, AttributeError, ValueError, RuntimeError):
            return None
        if whole.shape == split.shape and torch.allclose(whole.float(), split.float(), rtol=1e-5, atol=1e-6):
            self._head = (decoder, head)
        return self._head

    def _embed_batch(self, encs: list[EncodedSample], planned: PlannedBatch) -> list[Embedding]:
        if not self._batched_available():
            return [self._embed_encoded(enc) for enc in encs]
        try:
            return self._embed_batch_hooks(encs, planned.recompute, planned.logit_chunk)
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

    def _embed_batch_hooks(self, encs: list[EncodedSample], recompute: int = 0,
                           logit_chunk: int | None = None) -> list[Embedding]:
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
        targets = labels[:, first + 1:].to(self.device)  # (B, K)
        kwargs = {"input_ids": ids.to(self.device), "use_cache": False}
        if min(lengths) != longest:
            kwargs["attention_mask"] = mask.to(self.device)
        sink = _ProjectingSink(self.projector, batch)
        self.model.zero_grad(set_to_none=True)
        with self._batched.attach(sink, batch, recompute):
            if logit_chunk is None:
                losses = self._backward_whole(kwargs, first, longest, targets)
            else:
                losses = self._backward_chunked(kwargs, first, longest, targets, logit_chunk)
        finite = torch.isfinite(losses)
        vectors = sink.acc.to("cpu", torch.float64).numpy()  # (B, d)
        loss_values = losses.to("cpu", torch.float64).tolist()
        seconds = (time.perf_counter() - start) / batch
        out = []
        for b, enc in enumerate(encs):
            if not finite[b]:
                out.append(Embedding(None, 0.0, loss_values[b], enc.n_response_tokens, enc.truncated, seconds,
                                     f"non-finite loss ({loss_values[b]})"))
            else:
                out.append(_finish(vectors[b], loss_values[b], enc, seconds))
        return out

    def _backward_whole(self, kwargs: dict, first: int, longest: int, targets: torch.Tensor) -> torch.Tensor:
        """All of a step's logits at once, one backward; returns the (B,) losses."""
        batch = targets.shape[0]
        keep = torch.arange(first, longest - 1, device=self.device)  # (K,)
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
            total.backward()  # the hooks project every sample's gradient into the sink
        return losses.detach()

    def _backward_chunked(self, kwargs: dict, first: int, longest: int, targets: torch.Tensor,
                          chunk: int) -> torch.Tensor:
        """The head on `chunk` positions per sample at a time, each chunk's loss back-propagated
        into the hidden states, then one backward through the model; returns the (B,) losses.

        A sample whose loss turns non-finite in a chunk gets no gradient from that chunk on
        (its row is reported as an error; rows never mix, so the others are untouched).
        """
        decoder, head = self._split_head()
        batch = targets.shape[0]
        counts = (targets != IGNORE_INDEX).sum(1)  # (B,) response tokens per sample
        with self._autocast():
            hidden = decoder(**kwargs).last_hidden_state  # (B, T, h)
        kept = hidden.detach()[:, first:longest - 1].requires_grad_()  # (B, K, h), a leaf
        losses = torch.zeros(batch, dtype=torch.float32, device=self.device)
        for c0 in range(0, kept.shape[1], chunk):
            c1 = min(c0 + chunk, kept.shape[1])
            with self._autocast():
                logits = head(kept[:, c0:c1])  # (B, c, V)
                per_token = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                            targets[:, c0:c1].reshape(-1), ignore_index=IGNORE_INDEX,
                                            reduction="none").view(batch, -1)
                part = per_token.sum(1) / counts  # (B,) this chunk's share of each mean
            losses += part.detach()
            total = part[torch.isfinite(losses)].sum()
            if total.requires_grad:
                total.backward()  # the head's hooks deliver this chunk's share; kept.grad accumulates
            del logits, per_token, part, total
        if hidden.requires_grad and kept.grad is not None:
            grad = torch.zeros_like(hidden)  # (B, T, h): no gradient at positions without a logit
            grad[:, first:longest - 1] = kept.grad
            del kept
            hidden.backward(grad)
        return losses

class _NullSink:
    """Takes per-sample pieces and drops them (the probe forwards of `step_cost` never backward)."""

    def dense(self, values: torch.Tensor, offset: int) -> None:
        pass

    def rows(self, values: torch.Tensor, rows: torch.Tensor, offset: int) -> None:
        pass


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
