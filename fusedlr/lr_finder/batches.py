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
      the loss in the outputs (``output_loss``: Hugging Face models compute it from ``labels``).
    """
    if isinstance(batch, Mapping):
        outputs = model(**batch)
        return loss_fn(outputs, batch) if loss_fn is not None else output_loss(outputs)
    if loss_fn is None:
        raise ValueError("find_lr needs loss_fn (or step_fn) for batches that are not dicts")
    if isinstance(batch, torch.Tensor):
        return loss_fn(model(batch), batch)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        *inputs, target = batch
        return loss_fn(model(*inputs), target)
    raise TypeError(f"find_lr: cannot read a batch of type {type(batch).__name__}; pass step_fn(batch) -> loss")


def describe(value) -> str:
    """A short description of ``value`` for an error message (a tensor's repr can be megabytes)."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        items = ", ".join(describe(v) for v in value[:3]) + (", ..." if len(value) > 3 else "")
        return f"a {type(value).__name__} of {len(value)} ({items})"
    return f"a {type(value).__name__}"


def output_loss(outputs) -> torch.Tensor:
    """The loss in a model's outputs, when no ``loss_fn`` is given: ``outputs["loss"]`` or
    ``outputs.loss`` (a Hugging Face ``ModelOutput``), the first element of a tuple or list (a
    Hugging Face model called with ``return_dict=False`` puts the loss first when the batch has
    labels), or the outputs themselves; it must be a one-element tensor."""
    if isinstance(outputs, Mapping):
        loss = outputs.get("loss")
    elif hasattr(outputs, "loss"):
        loss = outputs.loss
    elif isinstance(outputs, (tuple, list)) and outputs:
        loss = outputs[0]
    else:
        loss = outputs
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss
    raise ValueError(
        f"find_lr: the model's outputs hold no loss (got {describe(outputs)}); without loss_fn, a dict batch's "
        "model must return its loss: a 'loss' key or attribute, a one-element tensor first in a tuple, or the "
        "loss itself (Hugging Face models: put labels in the batch). Else pass loss_fn(outputs, batch)."
    )


class DataRanOut(Exception):
    """A one-shot iterable (an iterator, a generator) ended: it cannot start another pass."""


def endless(data):
    """Batches of ``data`` forever, starting a new pass (a new iterator) when one ends; raises
    ``DataRanOut`` when a pass after the first yields nothing (a one-shot iterator)."""
    passes = 0
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            if passes:  # a one-shot iterator (a generator) cannot start a second pass
                raise DataRanOut
            raise ValueError("find_lr: the data yielded no batch")
        passes += 1


def data_generators(data) -> list:
    """The ``torch.Generator`` objects a DataLoader shuffles with (its own ``generator``, its
    sampler's): the global RNG state the test restores does not cover them."""
    found = []
    for owner in (data, getattr(data, "sampler", None), getattr(getattr(data, "batch_sampler", None), "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found
