"""``opt.step()`` inside ``torch.compile``: one custom op, ``fusedlr::step``.

The step's host work (checks, plan cache, launches) cannot be traced: it reads addresses and
Python-side caches. So a compiled function that calls ``opt.step()`` records a single opaque
op instead, declared to mutate the params and to read their grads, whose implementation runs
the eager step when the graph runs. Dynamo never reads a hyperparameter while tracing it, so a
new lr (a torch scheduler writing ``group["lr"]``, or a fusedlr schedule advancing on the
device) never recompiles, and ``fullgraph=True`` holds.
"""

from __future__ import annotations

import itertools
import weakref

import torch

_optimizers: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_handles = itertools.count()


def register(opt) -> int:
    """A handle the op can carry (an int) for ``opt``, held weakly."""
    handle = next(_handles)
    _optimizers[handle] = opt
    return handle


@torch.library.custom_op("fusedlr::step", mutates_args=("params",))
def _step_op(handle: int, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    opt = _optimizers.get(handle)
    if opt is None:
        raise RuntimeError("fusedlr::step: the optimizer this compiled graph was traced with no longer exists")
    live = _with_grads(opt)
    opt._eager_step()
    # Under functionalization without re-inplacing (aot_eager) the op is handed copies of the
    # params and the graph writes those back afterwards: give them the new values. Inductor
    # re-inplaces the op, hands over the params themselves, and nothing is copied.
    for handed, param in zip(params, live):
        if handed.data_ptr() != param.data_ptr():
            handed.copy_(param)


@_step_op.register_fake
def _(handle, params, grads):
    return None


def step_in_graph(opt) -> None:
    """What ``opt.step()`` contributes to a graph being traced: the op, and nothing that reads
    a hyperparameter (``param_groups`` is not touched: dynamo would guard on every value)."""
    params = _with_grads(opt)
    _step_op(opt._compile_handle, params, [getattr(p, opt.grad_attribute) for p in params])


def _with_grads(opt) -> list[torch.Tensor]:
    return [p for p in opt._flat_params if getattr(p, opt.grad_attribute, None) is not None]
