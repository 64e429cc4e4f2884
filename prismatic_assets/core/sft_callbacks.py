"""Progress hooks for `sft.train_sft`, as the Trainer's callbacks.

Kept apart from `sft` because it imports transformers (seconds to load): `sft`'s settings
are part of the config that every Dagster step process loads, and only a training run needs
the Trainer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

from transformers import TrainerCallback

from prismatic_assets.core.sft import ProgressFn

__all__ = ["CallbackLike", "ProgressCallback", "as_callbacks"]


class ProgressCallback(TrainerCallback):
    """Adapts a plain `fn(step, loss)` to the Trainer's callback interface."""

    def __init__(self, fn: ProgressFn) -> None:
        self.fn = fn

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.fn(int(state.global_step), float(logs["loss"]))


CallbackLike = Union[TrainerCallback, ProgressFn]


def as_callbacks(callbacks: CallbackLike | Sequence[CallbackLike] | None) -> list[TrainerCallback]:
    """TrainerCallback instances from instances, callback classes and plain `fn(step, loss)` hooks."""
    if callbacks is None:
        return []
    # Any: each item is checked below, and anything else is refused with the fix.
    items: Sequence[Any] = [callbacks] if isinstance(callbacks, TrainerCallback) or callable(callbacks) \
        else callbacks
    out: list[TrainerCallback] = []
    for cb in items:
        if isinstance(cb, TrainerCallback):
            out.append(cb)
        elif isinstance(cb, type) and issubclass(cb, TrainerCallback):
            out.append(cb())  # what the Trainer does with a callback class
        elif callable(cb):
            out.append(ProgressCallback(cb))
        else:
            raise TypeError(f"callback {cb!r}: pass a transformers TrainerCallback or a callable(step, loss)")
    return out
