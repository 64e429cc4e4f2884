"""Per-sample gradients by hooks: equal, in float64, to one backward pass per sample."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prismatic_assets.core.per_sample import PerSampleGradients, UnsupportedModule, repeated_blocks


class _Rotate(nn.Module):
    """A module of no known kind: its weight enters a matrix product (replayed under vmap)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.randn(width, width) / width)
        self.shift = nn.Parameter(torch.randn(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.m + self.shift.sin()


class TinyRMSNorm(nn.Module):
    """Written like transformers' RMSNorm classes: replayed once for the whole batch."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class _Net(nn.Module):
    """Every kind of owner: an embedding with a padding row, tied output weights, a biased
    Linear, an RMSNorm (replayed for the batch), a LayerNorm (whose
    fused kernel refuses that, so it is replayed per sample), a module of no known kind (replayed per
    sample) and a Linear applied twice."""

    def __init__(self, vocab: int = 11, width: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width, padding_idx=0)
        self.mix = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.rms = TinyRMSNorm(width)
        self.rotate = _Rotate(width)
        self.twice = nn.Linear(width, width, bias=False)
        self.out = nn.Linear(width, vocab, bias=False)
        self.out.weight = self.embed.weight  # tied, as in SmolLM2 and Qwen2.5-0.5B

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)  # (B, T, w)
        h = h + torch.tanh(self.mix(h))
        h = self.rotate(self.rms(self.norm(h)))
        h = self.twice(torch.relu(self.twice(h)))
        return self.out(h)  # (B, T, vocab)


def _loss(logits: torch.Tensor, targets: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(B,) per-sample losses; positions past a sample's length are padding and ignored."""
    per = nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
    mask = torch.arange(targets.shape[1]) < torch.tensor(lengths).unsqueeze(1)
    return (per * mask).sum(1) / mask.sum(1)


class _Collect:
    """Writes every delivered piece into a dense (B, input_dim) matrix."""

    def __init__(self, batch: int, input_dim: int) -> None:
        self.grads = torch.zeros(batch, input_dim, dtype=torch.float64)

    def dense(self, values, offset):
        self.grads[:, offset:offset + values.shape[1]] += values.double()

    def rows(self, values, rows, offset):
        width = values.shape[2]
        for r, row in enumerate(rows.tolist()):
            self.grads[:, offset + row * width: offset + (row + 1) * width] += values[:, r].double()


def _reference(model, ids, targets, lengths, params) -> torch.Tensor:
    """One forward and backward per sample, on the unpadded sample alone."""
    rows = []
    for b, n in enumerate(lengths):
        model.zero_grad(set_to_none=True)
        _loss(model(ids[b:b + 1, :n]), targets[b:b + 1, :n], [n]).sum().backward()
        rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                               for _, p in params]))
    return torch.stack(rows)


@pytest.mark.parametrize("pattern", [None, "norm|twice", "embed", "rotate|rms"])
def test_hooks_give_each_samples_own_gradient(pattern):
    torch.manual_seed(0)
    model = _Net().double()
    params = [(n, p) for n, p in model.named_parameters() if pattern is None or any(k in n for k in pattern.split("|"))]
    chosen = {id(p) for _, p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    lengths = [7, 3, 5, 7]
    ids = torch.randint(1, 11, (4, 7))
    ids[1, 1] = 0  # the padding row of the embedding appears inside a sample: it gets no gradient
    for b, n in enumerate(lengths):
        ids[b, n:] = 0  # right padding
    targets = torch.randint(0, 11, (4, 7))
    expected = _reference(model, ids, targets, lengths, params)
    model.zero_grad(set_to_none=True)

    # Small blocks, so the Linear weights and the embedding rows are delivered in several pieces.
    hooks = PerSampleGradients(model, params, block_bytes=4 * 8 * 6 * 2)
    kinds = {o.name: o.kind for o in hooks.owners}
    want = {"embed": "embedding", "mix": "linear", "norm": "norm", "rms": "norm", "rotate": "generic",
            "twice": "linear", "out": "linear"}
    assert kinds == {name: kind for name, kind in want.items() if name in kinds}
    sink = _Collect(4, hooks.input_dim)
    with hooks.attach(sink, 4):
        _loss(model(ids), targets, lengths).sum().backward()
    after = {o.name: o.kind for o in hooks.owners}
    # nn.LayerNorm's fused kernel refused the batched replay: per sample from now on. The
    # RMSNorm's batched replay worked, so it stays a norm.
    assert after == {**kinds, **({"norm": "generic"} if "norm" in kinds else {})}
    torch.testing.assert_close(sink.grads, expected, rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())  # nothing was summed into .grad
    assert [p.requires_grad for p in model.parameters()] == [id(p) in chosen for p in model.parameters()]
    assert (expected.abs().sum(1) > 0).all()


class _Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x, y):
        return self.scale * x + y


class PairRMSNorm(_Gate):
    """A norm by name and parameter shape, but with two inputs."""


class _TwoInputs(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x, x)


@pytest.mark.parametrize("inner, kind", [(_Gate, "generic"), (PairRMSNorm, "norm")])
def test_a_module_with_two_inputs_is_refused_with_the_fix(inner, kind):
    model = _TwoInputs(inner())
    hooks = PerSampleGradients(model, list(model.named_parameters()))
    assert hooks.owners[0].kind == kind
    with pytest.raises(UnsupportedModule, match=r"takes more than one input.*batch_size=1"):
        with hooks.attach(_Collect(2, 3), 2):
            model(torch.ones(2, 3)).sum().backward()
    assert model.inner.scale.requires_grad  # restored on the way out


def test_a_parameter_outside_any_module_is_refused():
    model = nn.Linear(2, 2)
    stray = nn.Parameter(torch.zeros(3))
    with pytest.raises(UnsupportedModule, match="no module"):
        PerSampleGradients(model, [("stray", stray)])


class _Block(nn.Module):
    """A residual block like a decoder layer: norm, linear, nonlinearity, linear."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = TinyRMSNorm(width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width, bias=False)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return x + scale * self.down(torch.tanh(self.up(self.norm(x))))


class _ScaleFirstBlock(_Block):
    """A block whose first positional argument is not its hidden states."""

    def forward(self, scale: float, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, scale)


class _Stack(nn.Module):
    """Embedding, four repeated blocks (called positionally, by keyword, with every argument
    positional, or with the scale first) and a tied head."""

    def __init__(self, vocab: int = 11, width: int = 6, by_keyword: bool = False, all_positional: bool = False,
                 scale_first: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList((_ScaleFirstBlock if scale_first else _Block)(width) for _ in range(4))
        self.out = nn.Linear(width, vocab, bias=False)
        self.out.weight = self.embed.weight
        self.by_keyword = by_keyword
        self.all_positional = all_positional
        self.scale_first = scale_first

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for layer in self.layers:
            if self.scale_first:
                h = layer(0.5, h)
            elif self.all_positional:
                h = layer(h, 0.5)
            else:
                h = layer(x=h, scale=0.5) if self.by_keyword else layer(h, scale=0.5)
        return self.out(h)


@pytest.mark.parametrize("pattern, recompute", [(None, 4), (None, 2), ("layers.3", 1), ("layers.3", 4),
                                                 ("layers.1.up", 3)])
def test_recomputed_blocks_give_the_same_per_sample_gradients(pattern, recompute):
    torch.manual_seed(0)
    model = _Stack().double()
    params = [(n, p) for n, p in model.named_parameters() if pattern is None or pattern in n]
    chosen = {id(p) for _, p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    lengths = [7, 4, 6]
    ids = torch.randint(1, 11, (3, 7))
    targets = torch.randint(0, 11, (3, 7))
    expected = _reference(model, ids, targets, lengths, params)
    model.zero_grad(set_to_none=True)
    hooks = PerSampleGradients(model, params)
    assert hooks.blocks == list(model.layers)
    sink = _Collect(3, hooks.input_dim)
    forwards = []
    counter = model.layers[-1].up.register_forward_hook(lambda *a: forwards.append(torch.is_grad_enabled()))
    with hooks.attach(sink, 3, recompute=recompute):
        _loss(model(ids), targets, lengths).sum().backward()
    counter.remove()
    torch.testing.assert_close(sink.grads, expected, rtol=1e-10, atol=1e-12)
    # The last block ran twice: once keeping nothing (no grad), once again in backward.
    assert forwards == [False, True] and hooks.recompute_missed is None
    assert all("forward" not in layer.__dict__ for layer in model.layers)  # unpatched on the way out


@pytest.mark.parametrize("calling", ["by_keyword", "scale_first"])
def test_a_block_whose_first_positional_argument_is_not_its_hidden_states_runs_plainly_and_says_why(calling):
    torch.manual_seed(0)
    model = _Stack(**{calling: True}).double()
    params = list(model.named_parameters())
    ids = torch.randint(1, 11, (2, 5))
    targets = torch.randint(0, 11, (2, 5))
    expected = _reference(model, ids, targets, [5, 5], params)
    model.zero_grad(set_to_none=True)
    hooks = PerSampleGradients(model, params)
    sink = _Collect(2, hooks.input_dim)
    with hooks.attach(sink, 2, recompute=4):
        _loss(model(ids), targets, [5, 5]).sum().backward()
    torch.testing.assert_close(sink.grads, expected, rtol=1e-10, atol=1e-12)
    assert "first positional argument" in hooks.recompute_missed


def test_recompute_beyond_the_blocks_is_refused():
    model = _Stack()
    hooks = PerSampleGradients(model, list(model.named_parameters()))
    with pytest.raises(ValueError, match=r"recompute must be an integer in \[0, 4\]"):
        with hooks.attach(_Collect(1, hooks.input_dim), 1, recompute=5):
            pass


def _hooked(model, recompute: int = 0, passes: int = 1, **options):
    """(hooks, per-sample gradients from the hooks, the one-sample-at-a-time reference) for two
    samples of five tokens through `model`, with every parameter selected."""
    torch.manual_seed(1)
    ids = torch.randint(1, 11, (2, 5))
    targets = torch.randint(0, 11, (2, 5))
    params = list(model.named_parameters())
    expected = _reference(model, ids, targets, [5, 5], params)
    model.zero_grad(set_to_none=True)
    hooks = PerSampleGradients(model, params, **options)
    sink = _Collect(2, hooks.input_dim)
    with hooks.attach(sink, 2, recompute=recompute):
        for _ in range(passes):
            _loss(model(ids), targets, [5, 5]).sum().backward()
    return hooks, sink.grads, expected


def test_a_block_called_by_keyword_names_the_last_block_that_ran_plainly():
    torch.manual_seed(0)
    hooks, got, expected = _hooked(_Stack(by_keyword=True).double(), recompute=2)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert hooks.recompute_missed == "block 3 (_Block) does not take its hidden states as its first positional argument"


class _GatedBlock(nn.Module):
    """A block that also takes a keyword tensor (nested in a tuple or a dict) computed from the
    hidden states, so it needs a gradient while the weights are frozen."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, gates=None) -> torch.Tensor:
        gate = gates[0] if isinstance(gates, tuple) else gates["g"]
        return x + gate * torch.tanh(self.up(x))


class _GatedStack(nn.Module):
    def __init__(self, nest: str, vocab: int = 11, width: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList(_GatedBlock(width) for _ in range(3))
        self.out = nn.Linear(width, vocab, bias=False)
        self.nest = nest

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for layer in self.layers:
            gate = torch.sigmoid(h.mean(-1, keepdim=True))
            h = layer(h, gates=(gate,) if self.nest == "tuple" else {"g": gate})
        return self.out(h)


@pytest.mark.parametrize("nest", ["tuple", "dict"])
def test_a_keyword_tensor_that_needs_a_gradient_runs_the_block_plainly_and_says_why(nest):
    torch.manual_seed(0)
    hooks, got, expected = _hooked(_GatedStack(nest).double(), recompute=3)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert hooks.recompute_missed == "block 2 (_GatedBlock) gets a keyword tensor that needs a gradient"


class _Maybe(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(width)) if width else None


class _Lists(nn.Module):
    def __init__(self, *lists: list[nn.Module]) -> None:
        super().__init__()
        for i, blocks in enumerate(lists):
            self.add_module(f"list{i}", nn.ModuleList(blocks))


def test_repeated_blocks_are_the_largest_list_of_two_or_more_of_one_class():
    two = [_Maybe(3), _Maybe(3)]
    assert repeated_blocks(_Lists(two)) == two  # two blocks are enough
    single = [_Maybe(1), _Maybe(0)]  # one parameter in all: still more than none
    assert repeated_blocks(_Lists(single)) == single
    mixed, blocks = [_Maybe(50), nn.Linear(9, 9)], [_Maybe(2), _Maybe(2), _Maybe(2)]
    assert repeated_blocks(_Lists(mixed, blocks)) == blocks  # a list of mixed classes is passed over
    first, second = [_Maybe(4), _Maybe(4)], [_Maybe(2), _Maybe(6)]
    assert repeated_blocks(_Lists(first, second)) == first  # equal sizes: the first in module order
    assert repeated_blocks(_Lists([_Maybe(3)])) == [] and repeated_blocks(nn.Linear(2, 2)) == []


def test_the_smallest_block_of_one_byte_still_gives_each_samples_gradient():
    torch.manual_seed(0)
    model = _Net().double()
    _, got, expected = _hooked(model, block_bytes=1)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="block_bytes must be positive, got 0"):
        PerSampleGradients(model, list(model.named_parameters()), block_bytes=0)


@pytest.mark.parametrize("options", [{"max_norm": 1.0}, {"scale_grad_by_freq": True}, {"sparse": True}])
def test_embeddings_whose_gradient_is_not_per_token_are_refused_by_name(options):
    model = nn.Sequential()
    model.add_module("tokens", nn.Embedding(5, 3, **options))
    with pytest.raises(UnsupportedModule, match=r"embedding tokens uses max_norm, scale_grad_by_freq or sparse"):
        PerSampleGradients(model, list(model.named_parameters()))


class MyLayerNorm(nn.Module):
    def __init__(self, shape) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(shape))

    def forward(self, x):
        return self.weight * x


class MyRMSNorm(MyLayerNorm):
    pass


class Scale(MyLayerNorm):
    pass


def test_a_norm_is_a_norm_class_with_one_dimensional_parameters():
    model = nn.Sequential()
    for name, module in [("layer", MyLayerNorm(4)), ("rms", MyRMSNorm(4)), ("square", MyRMSNorm((4, 4))),
                         ("scale", Scale(4)), ("torch", nn.RMSNorm(4))]:
        model.add_module(name, module)
    hooks = PerSampleGradients(model, list(model.named_parameters()))
    assert {o.name: o.kind for o in hooks.owners} == {"layer": "norm", "rms": "norm", "square": "generic",
                                                      "scale": "generic", "torch": "norm"}


class _Calls(_Collect):
    """Also records which offsets arrived as dense blocks and which as rows."""

    def __init__(self, batch: int, input_dim: int) -> None:
        super().__init__(batch, input_dim)
        self.dense_at: set[int] = set()
        self.rows_at: set[int] = set()

    def dense(self, values, offset):
        self.dense_at.add(offset)
        super().dense(values, offset)

    def rows(self, values, rows, offset):
        self.rows_at.add(offset)
        super().rows(values, rows, offset)


def test_embedding_gradients_arrive_as_rows_and_kept_inputs_are_watched():
    # Rows, not a dense (B, vocab * width) block: memory follows the tokens used, not the vocabulary.
    torch.manual_seed(0)
    model = _Net().double()
    model.out.weight = nn.Parameter(model.embed.weight.detach().clone())  # untied: only the embedding owns it
    params = [(n, p) for n, p in model.named_parameters() if n.startswith(("embed", "mix"))]
    ids, targets = torch.randint(1, 11, (2, 5)), torch.randint(0, 11, (2, 5))
    hooks = PerSampleGradients(model, params, block_bytes=1 << 20)
    sink = _Calls(2, hooks.input_dim)
    seen = []
    with hooks.attach(sink, 2), hooks.watching(seen.append):
        _loss(model(ids), targets, [5, 5]).sum().backward()
    assert sink.rows_at == {0} and 0 not in sink.dense_at  # the embedding's weight is first in the layout
    assert seen and all(isinstance(x, torch.Tensor) and x.shape[0] == 2 for x in seen)
    assert any(x.dtype == torch.long for x in seen)  # the embedding's token ids are kept, not its output


def test_two_batches_under_one_attach_both_get_their_gradients():
    # The hooks stand aside only while a module is replayed: the next forward is watched again.
    torch.manual_seed(0)
    _, got, expected = _hooked(_Net().double(), passes=2)
    torch.testing.assert_close(got, 2 * expected, rtol=1e-10, atol=1e-12)


def test_a_forward_without_gradients_runs_the_recomputed_blocks_plainly():
    torch.manual_seed(0)
    model = _Stack().double()
    ids = torch.randint(1, 11, (2, 5))
    with torch.no_grad():
        plain = model(ids)
    hooks = PerSampleGradients(model, list(model.named_parameters()))
    with hooks.attach(_Collect(2, hooks.input_dim), 2, recompute=4), torch.no_grad():
        torch.testing.assert_close(model(ids), plain, rtol=0, atol=0)
    assert hooks.recompute_missed is None


# ----------------------------------------------------------------------------- edges the mutation run found


def test_a_recomputed_block_gets_its_other_positional_arguments():
    torch.manual_seed(0)
    hooks, got, expected = _hooked(_Stack(all_positional=True).double(), recompute=4)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert hooks.recompute_missed is None


@pytest.mark.parametrize("by_keyword", [False, True])
def test_a_forward_without_gradients_while_attached_gathers_nothing_and_changes_nothing(by_keyword):
    torch.manual_seed(0)
    model = _Stack(by_keyword=by_keyword).double()
    ids = torch.randint(1, 11, (2, 5))
    with torch.no_grad():
        plain = model(ids)
    hooks = PerSampleGradients(model, list(model.named_parameters()))
    sink = _Collect(2, hooks.input_dim)
    with hooks.attach(sink, 2, recompute=4):
        with torch.no_grad():
            logits = model(ids)
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)
    assert not logits.requires_grad  # no owner's output was made to ask for a gradient
    assert hooks.recompute_missed is None  # nothing to recompute without gradients: nothing missed
    assert not sink.grads.any()


def test_per_sample_gradients_under_bf16_autocast_match_one_sample_at_a_time():
    """Under autocast a Linear's output gradient is bf16 while its kept input is float32: the
    per-sample product runs in bf16, as the module's own backward does."""
    torch.manual_seed(1)
    model = _Net()
    ids = torch.randint(1, 11, (2, 5))
    targets = torch.randint(0, 11, (2, 5))
    params = list(model.named_parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _reference(model, ids, targets, [5, 5], params)
    model.zero_grad(set_to_none=True)
    hooks = PerSampleGradients(model, params)
    sink = _Collect(2, hooks.input_dim)
    with hooks.attach(sink, 2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _loss(model(ids), targets, [5, 5]).sum()
        loss.backward()
    # bf16 keeps 8 bits of mantissa: the two ways round differently, by a few parts in a thousand.
    assert ((sink.grads - expected).norm() / expected.norm()).item() < 1e-2
    assert (sink.grads - expected).abs().max().item() < 2e-2 * expected.abs().max().item()


class _TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x * self.scale, x


class _ListIn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, xs):
        return xs[0] * self.scale


class _WrapOwner(nn.Module):
    """Calls its owning child with a list, by keyword only, or takes its tuple output apart."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.inner = _TupleOut() if how == "tuple out" else _ListIn()

    def forward(self, x):
        if self.how == "tuple out":
            return self.inner(x)[0]
        return self.inner([x]) if self.how == "list in" else self.inner(xs=[x])


@pytest.mark.parametrize("how", ["tuple out", "list in", "keyword only"])
def test_a_module_without_one_tensor_in_and_out_is_refused_with_the_fix(how):
    model = _WrapOwner(how)
    hooks = PerSampleGradients(model, list(model.named_parameters()))
    with pytest.raises(UnsupportedModule, match="not called with one tensor input and one tensor output: embed one"):
        with hooks.attach(_Collect(2, hooks.input_dim), 2):
            model(torch.ones(2, 3)).sum().backward()
