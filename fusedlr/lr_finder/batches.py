"""Turning one batch of any common shape into a loss, and feeding batches endlessly."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def to_device(batch, device, non_blocking: bool = True):
    """``batch`` with every tensor in it (nested tuples, lists, dicts) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device, non_blocking) for k, v in batch.items()})
    if isinstance(batch, (tuple, list)):
        moved = [to_device(v, device, non_blocking) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def model_loss(model, batch, loss_fn):
    """The loss of ``batch`` under ``model``:

    * a tensor ``x``: ``loss_fn(model(x), x)`` (e.g. a language model's tokens);
    * a tuple or list ``(x, y)``: ``loss_fn(model(x), y)``; ``(*inputs, y)``: ``loss_fn(model(*inputs), y)``;
    * a dict: ``model(**batch)``, then ``loss_fn(outputs, batch)`` when ``loss_fn`` is given, else
      the outputs' ``loss`` (Hugging Face models compute it from ``labels`` in the batch).
    """
    if isinstance(batch, Mapping):
        outputs = model(**batch)
        if loss_fn is not None:
            return loss_fn(outputs, batch)
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", outputs)
        if loss is None:
            raise ValueError("the model returned no 'loss' for a dict batch: pass loss_fn(outputs, batch)")
        return loss
    if loss_fn is None:
        raise ValueError("find_lr needs loss_fn (or step_fn) for batches that are not dicts")
    if isinstance(batch, torch.Tensor):
        return loss_fn(model(batch), batch)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        *inputs, target = batch
        return loss_fn(model(*inputs), target)
    raise TypeError(f"find_lr: cannot read a batch of type {type(batch).__name__}; pass step_fn(batch) -> loss")


def endless(data):
    """Batches of ``data`` forever, starting a new pass (a new iterator) when one ends."""
    passes = 0
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            if passes:  # a one-shot iterator (a generator) cannot start a second pass
                raise ValueError("find_lr: the data ran out; pass a re-iterable (a DataLoader, a list) or more batches")
            raise ValueError("find_lr: the data yielded no batch")
        passes += 1
