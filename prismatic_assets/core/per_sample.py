"""Per-sample parameter gradients of a whole batch from one forward and one backward pass.

A plain backward pass sums the gradients of a batch's samples into `.grad`. Here the
parameters are frozen instead and hooks on the modules that own the selected parameters
rebuild each sample's gradient from what autograd passes through anyway (as Opacus and
BackPACK do): the module's input, saved in the forward pass, and the gradient of its
output, seen in the backward pass.

- `nn.Linear`: dW_b = sum_t g_bt x_bt^T, db_b = sum_t g_bt, one batched matrix product per
  block of output rows (the block bounds memory: B x rows x in values at a time).
- `nn.Embedding`: the rows of the tokens a batch contains, dW_b[v] = sum_{t: id_bt = v}
  g_bt; the padding row gets no gradient, as in `nn.Embedding`'s own backward.
- Normalization layers (LayerNorm, RMSNorm and classes named *RMSNorm/*LayerNorm, whose
  weights act elementwise): the forward is replayed once for the batch with each weight
  given a leading batch dimension, so one `autograd.grad` yields every sample's share.
- Any other module owning selected parameters: the module's forward is replayed per
  sample under `torch.func.vmap` and differentiated with `vjp`.

The pieces go to a sink as soon as they exist (`GradientSink`: the projection of
`core/projection.py`), so no sample's full gradient is ever held in memory.

Memory: `attach(..., recompute=c)` recomputes the last c repeated blocks (a transformer's
decoder layers, `blocks`) in the backward pass instead of keeping their activations
(reentrant activation checkpointing: their first forward keeps nothing, and the hooks
fire in the recomputation, whose inputs and output gradients are the same). A recomputed
block keeps only its input, at the cost of one more forward of that block. Weights shared
by several modules (tied input and output embeddings) get every module's share: the
contributions add up in the sink. Samples never interact: one sample's gradient depends
only on its own rows of the batch, whatever the padding.

This module does not build batches, losses or projections (`core/gradients.py` does).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

#: Memory for one block of per-sample weight gradients (B x rows x in values).
DEFAULT_BLOCK_BYTES = 256 * 1024**2


class GradientSink(Protocol):
    """Receives per-sample gradient pieces: coordinates are offsets into the flat parameter list."""

    def dense(self, values: torch.Tensor, offset: int) -> None:
        """values (B, n): coordinates [offset, offset + n) of every sample's gradient."""

    def rows(self, values: torch.Tensor, rows: torch.Tensor, offset: int) -> None:
        """values (B, R, width): rows `rows` of a (.., width) parameter stored at `offset`."""


class UnsupportedModule(NotImplementedError):
    """A module whose per-sample gradients these hooks cannot rebuild."""


@dataclass
class _Owner:
    module: nn.Module
    name: str
    kind: str  # "linear", "embedding", "norm" or "generic"
    offsets: dict[str, int] = field(default_factory=dict)  # local parameter name -> flat offset


class PerSampleGradients:
    """Hooks that deliver per-sample gradients of `params` (in their fixed order) to a sink.

    Use as ``with psg.attach(sink): loss_sum.backward()`` around the forward pass too:
    the forward hooks record inputs, the backward hooks compute and deliver. `loss_sum`
    must be the sum of per-sample losses, each depending only on its own batch row.
    """

    def __init__(self, model: nn.Module, params: list[tuple[str, nn.Parameter]],
                 block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        if block_bytes < 1:
            raise ValueError(f"block_bytes must be positive, got {block_bytes!r}")
        self.model = model
        self.block_bytes = int(block_bytes)
        offsets: dict[int, int] = {}
        offset = 0
        for _, p in params:
            offsets[id(p)] = offset
            offset += p.numel()
        self.input_dim = offset
        self.owners: list[_Owner] = []
        owned: set[int] = set()
        for module_name, module in model.named_modules():
            own = {n: p for n, p in module._parameters.items() if p is not None and id(p) in offsets}
            if not own:
                continue
            kind = _kind(module, module_name)
            self.owners.append(_Owner(module, module_name, kind, {n: offsets[id(p)] for n, p in own.items()}))
            owned.update(id(p) for p in own.values())
        orphans = [name for name, p in params if id(p) not in owned]
        if orphans:
            raise UnsupportedModule(f"parameters {orphans[:3]} belong to no module of the model: batched gradients "
                                    "cannot reach them; embed one sample at a time (batch_size=1)")
        self.blocks = repeated_blocks(model)
        # Blocks whose parameters are selected: their input needs a gradient even when
        # nothing upstream does (a recomputed block must have one to take part in backward).
        self._selected_blocks = {i for i, block in enumerate(self.blocks)
                                 if any(id(p) in offsets for p in block.parameters())}
        self._sink: GradientSink | None = None
        self._batch = 0
        self._replaying = False  # the hooks stand aside while a module's forward is replayed
        self._watch: Callable[[torch.Tensor], None] | None = None
        #: Set when a block meant to be recomputed had to run plainly (see `_recomputed`).
        self.recompute_missed: str | None = None

    @contextmanager
    def attach(self, sink: GradientSink, batch: int, recompute: int = 0) -> Iterator[None]:
        """Hooks in place and every parameter frozen (no `.grad` is written) while inside.

        recompute: the last `recompute` of `blocks` keep no activations; they are run again
        in the backward pass (same gradients, one more forward of each).
        """
        if isinstance(recompute, bool) or not isinstance(recompute, int) or not 0 <= recompute <= len(self.blocks):
            raise ValueError(f"recompute must be an integer in [0, {len(self.blocks)}] (the model's repeated "
                             f"blocks), got {recompute!r}")
        saved = [(p, p.requires_grad) for p in self.model.parameters()]
        handles = []
        patched: list[tuple[nn.Module, Callable[..., Any] | None]] = []
        self._sink, self._batch = sink, int(batch)
        try:
            for p, _ in saved:
                p.requires_grad_(False)
            for owner in self.owners:
                if owner.kind != "embedding":
                    handles.append(owner.module.register_forward_pre_hook(self._needs_grad_input, with_kwargs=True))
                handles.append(owner.module.register_forward_hook(self._forward_hook(owner), with_kwargs=True))
            for index in range(len(self.blocks) - recompute, len(self.blocks)):
                block = self.blocks[index]
                patched.append((block, block.__dict__.get("forward")))
                block.forward = self._recomputed(index, block.forward)
            yield
        finally:
            for block, own_forward in patched:
                if own_forward is None:
                    del block.forward
                else:
                    block.forward = own_forward
            for handle in handles:
                handle.remove()
            for p, flag in saved:
                p.requires_grad_(flag)
            self._sink, self._batch = None, 0

    @contextmanager
    def watching(self, seen: Callable[[torch.Tensor], None]) -> Iterator[None]:
        """Call `seen(x)` with every module input the hooks keep for the backward pass (for
        measuring what a step holds; see core/gradient_memory.py)."""
        self._watch = seen
        try:
            yield
        finally:
            self._watch = None

    def _recomputed(self, index: int, forward):
        """`forward` of block `index`, wrapped so that backward recomputes it (reentrant checkpoint).

        Reentrant checkpointing differentiates only positional tensor inputs, so a block whose
        hidden states come as a keyword, or with a keyword tensor that needs a gradient, runs
        plainly (correct, but it keeps its activations): `recompute_missed` says why.
        """

        def run(*args, **kwargs):
            x = args[0] if args else None
            if not torch.is_grad_enabled() or self._replaying:
                return forward(*args, **kwargs)
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                self.recompute_missed = (f"block {index} ({type(self.blocks[index]).__name__}) does not take its "
                                         "hidden states as its first positional argument")
                return forward(*args, **kwargs)
            if any(t.requires_grad for t in _tensors(kwargs.values())):
                self.recompute_missed = (f"block {index} ({type(self.blocks[index]).__name__}) gets a keyword "
                                         "tensor that needs a gradient")
                return forward(*args, **kwargs)
            if not x.requires_grad:
                if index not in self._selected_blocks:
                    return forward(*args, **kwargs)  # nothing to differentiate in or before this block
                x = x.detach().requires_grad_()
            return checkpoint(functools.partial(forward, **kwargs), x, *args[1:], use_reentrant=True,
                              preserve_rng_state=False)

        return run

    # -- forward side ------------------------------------------------------------------------
    def _needs_grad_input(self, module, args, kwargs):
        # With every weight frozen, nothing upstream of the first selected module asks for a
        # gradient: give that module's input one, so backward reaches it and stops there.
        if self._replaying:
            return None
        if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point() and not args[0].requires_grad:
            return (args[0].detach().requires_grad_(),) + tuple(args[1:]), kwargs
        return None

    def _forward_hook(self, owner: _Owner):
        def hook(module, args, kwargs, output):
            if self._replaying:
                return None
            if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
                raise UnsupportedModule(f"module {owner.name} ({type(module).__name__}) is not called with one "
                                        "tensor input and one tensor output: embed one sample at a time")
            if owner.kind in ("norm", "generic") and (len(args) > 1 or kwargs):
                raise UnsupportedModule(f"module {owner.name} ({type(module).__name__}) owns selected parameters "
                                        "and takes more than one input, so its forward cannot be replayed per "
                                        "sample: embed one sample at a time (batch_size=1)")
            x = args[0]
            if x.shape[0] != self._batch:
                raise UnsupportedModule(f"module {owner.name} saw a leading dimension of {x.shape[0]}, not the "
                                        f"batch size {self._batch}: its input is not laid out per sample")
            if owner.kind == "embedding" and not output.requires_grad:
                output.requires_grad_()  # a leaf: the weights are frozen
            if output.requires_grad:
                kept = x.detach()
                if self._watch is not None:
                    self._watch(kept)
                output.register_hook(lambda g, x=kept: self._deliver(owner, x, g))
            return output
        return hook

    # -- backward side -----------------------------------------------------------------------
    def _deliver(self, owner: _Owner, x: torch.Tensor, g: torch.Tensor) -> None:
        with torch.no_grad():
            if owner.kind == "linear":
                self._linear(owner, x, g)
            elif owner.kind == "embedding":
                self._embedding(owner, x, g)
            elif owner.kind == "norm":
                try:
                    self._norm(owner, x, g)
                except (RuntimeError, UnsupportedModule):
                    # A fused kernel that insists on the weight's own shape (nn.LayerNorm):
                    # replay it per sample from now on.
                    owner.kind = "generic"
                    self._generic(owner, x, g)
            else:
                self._generic(owner, x, g)

    @property
    def _active_sink(self) -> GradientSink:
        if self._sink is None:
            raise RuntimeError("per-sample gradients reach a sink only inside attach()")
        return self._sink

    def _linear(self, owner: _Owner, x: torch.Tensor, g: torch.Tensor) -> None:
        batch = g.shape[0]
        # kind "linear": an nn.Linear (see _kind)
        out_features, in_features = cast(nn.Linear, owner.module).weight.shape
        # Under autocast the output gradient is bf16: the product runs in bf16, as in the
        # module's own backward.
        x2 = x.reshape(batch, -1, in_features).to(g.dtype)  # (B, T, in)
        g2 = g.reshape(batch, -1, out_features)  # (B, T, out)
        if "weight" in owner.offsets:
            offset = owner.offsets["weight"]
            per_row = batch * in_features * g.element_size()
            step = max(1, self.block_bytes // per_row)
            for r0 in range(0, out_features, step):
                r1 = min(r0 + step, out_features)
                block = torch.bmm(g2[:, :, r0:r1].transpose(1, 2), x2)  # (B, r1-r0, in)
                self._active_sink.dense(block.reshape(batch, -1), offset + r0 * in_features)
        if "bias" in owner.offsets:
            self._active_sink.dense(g2.sum(1), owner.offsets["bias"])  # (B, out)

    def _embedding(self, owner: _Owner, ids: torch.Tensor, g: torch.Tensor) -> None:
        module = cast(nn.Embedding, owner.module)  # kind "embedding": an nn.Embedding (see _kind)
        batch = g.shape[0]
        width = module.weight.shape[1]
        ids = ids.reshape(batch, -1)  # (B, T)
        g = g.reshape(batch, -1, width)  # (B, T, width)
        if module.padding_idx is not None:
            g = g.masked_fill((ids == module.padding_idx).unsqueeze(-1), 0)
        tokens, inverse = torch.unique(ids, return_inverse=True)  # (R,), (B, T)
        step = max(1, self.block_bytes // (batch * width * g.element_size()))
        for r0 in range(0, tokens.numel(), step):
            r1 = min(r0 + step, tokens.numel())
            inside = (inverse >= r0) & (inverse < r1)  # (B, T)
            rows = torch.zeros(batch * (r1 - r0), width, dtype=g.dtype, device=g.device)  # (B*R', width)
            b_idx = torch.arange(batch, device=g.device).unsqueeze(1).expand_as(inverse)
            slot = (b_idx * (r1 - r0) + inverse - r0)[inside]
            rows.index_add_(0, slot, g[inside])
            self._active_sink.rows(rows.view(batch, r1 - r0, width), tokens[r0:r1], owner.offsets["weight"])

    def _norm(self, owner: _Owner, x: torch.Tensor, g: torch.Tensor) -> None:
        from torch.func import functional_call

        module = owner.module
        names = list(owner.offsets)
        batch = x.shape[0]
        expanded = {}
        for n in names:
            p = _parameter(module, n).detach()
            # (B, 1, .., 1, *p.shape): broadcasts like p against a (B, ..., *p.shape) input.
            shape = (batch,) + (1,) * (x.dim() - 1 - p.dim()) + tuple(p.shape)
            expanded[n] = p.reshape((1,) * (len(shape) - p.dim()) + tuple(p.shape)).expand(shape).clone()
            expanded[n].requires_grad_()
        self._replaying = True
        try:
            with torch.enable_grad():
                out = functional_call(module, expanded, (x,))
                if out.shape != g.shape:
                    raise UnsupportedModule(f"module {owner.name} ({type(module).__name__}) does not apply its "
                                            "weights elementwise: embed one sample at a time (batch_size=1)")
                grads = torch.autograd.grad(out, [expanded[n] for n in names], g.to(out.dtype))
        finally:
            self._replaying = False
        for name, grad in zip(names, grads):
            self._active_sink.dense(grad.reshape(batch, -1), owner.offsets[name])

    def _generic(self, owner: _Owner, x: torch.Tensor, g: torch.Tensor) -> None:
        from torch.func import functional_call, vjp, vmap

        module = owner.module
        names = list(owner.offsets)
        values = tuple(_parameter(module, n).detach() for n in names)

        def one(x_b: torch.Tensor, g_b: torch.Tensor):
            def f(*ps):
                return functional_call(module, dict(zip(names, ps)), (x_b.unsqueeze(0),))
            out, pull = vjp(f, *values)  # type: ignore[misc]  # typed 2- or 3-tuple: no overload on has_aux
            return pull(g_b.unsqueeze(0).to(out.dtype))

        self._replaying = True
        try:
            with torch.enable_grad():
                grads = vmap(one)(x, g)  # tuple of (B, *param.shape)
        finally:
            self._replaying = False
        for name, grad in zip(names, grads):
            self._active_sink.dense(grad.reshape(grad.shape[0], -1), owner.offsets[name])


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks (a transformer's decoder layers): the `nn.ModuleList` of at
    least two modules of one class that holds the most parameters; [] when there is none."""
    best: list[nn.Module] = []
    best_size = 0
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        children = list(module)
        if len({type(c) for c in children}) != 1:
            continue
        size = sum(p.numel() for c in children for p in c.parameters())
        if size > best_size:
            best, best_size = children, size
    return best


def _tensors(values) -> Iterator[torch.Tensor]:
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from _tensors(value)
        elif isinstance(value, dict):
            yield from _tensors(value.values())


def _parameter(module: nn.Module, name: str) -> torch.Tensor:
    """The module's own parameter `name` (the owners hold only the names of set parameters)."""
    p = module._parameters[name]
    if p is None:
        raise UnsupportedModule(f"{type(module).__name__}.{name} is None: it holds no parameter to take a gradient of")
    return p


def _kind(module: nn.Module, name: str) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        if module.max_norm is not None or module.scale_grad_by_freq or module.sparse:
            raise UnsupportedModule(f"embedding {name} uses max_norm, scale_grad_by_freq or sparse gradients: "
                                    "embed one sample at a time (batch_size=1)")
        return "embedding"
    norm_class = isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith(
        ("RMSNorm", "LayerNorm"))
    if norm_class and all(p is None or p.dim() == 1 for p in module._parameters.values()):
        return "norm"
    return "generic"
