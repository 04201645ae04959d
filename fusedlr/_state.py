"""Optimizer state that counts its own changes.

The kernel backends keep device tables of every state tensor's address. Re-reading each state
tensor every step to see whether one was replaced costs more host time than the step itself
with thousands of tensors, so the state keeps a version number instead: any assignment or
deletion in ``opt.state`` or in one parameter's state dict bumps it, and a step whose version
matches the last one can trust the last step's tables. Pickling and ``copy.deepcopy`` give the
plain ``defaultdict(dict)`` torch uses, so state dicts and saved optimizers hold no fusedlr type.
"""

from __future__ import annotations

from collections import defaultdict


def _plain(table: dict) -> defaultdict:
    return defaultdict(dict, {param: dict(state) for param, state in table.items()})


class ParamState(dict):
    """One parameter's state (``exp_avg``, ``step``, ...); changes bump the table's version."""

    __slots__ = ("_table",)

    def __init__(self, table: StateTable, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._table = table

    def _changed(self):
        self._table.version += 1

    def __setitem__(self, key, value):
        self._changed()
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._changed()
        super().__delitem__(key)

    def __ior__(self, other):
        self._changed()
        return super().__ior__(other)

    def pop(self, *args):
        self._changed()
        return super().pop(*args)

    def popitem(self):
        self._changed()
        return super().popitem()

    def clear(self):
        self._changed()
        super().clear()

    def update(self, *args, **kwargs):
        self._changed()
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        self._changed()
        return super().setdefault(key, default)

    def __reduce__(self):
        return dict, (dict(self),)


class StateTable(dict):
    """``param -> ParamState``, created on first access like torch's ``defaultdict(dict)``."""

    __slots__ = ("version",)

    def __init__(self, states=()):
        super().__init__()
        self.version = 0
        for param, state in dict(states).items():
            self[param] = state

    def __missing__(self, param):
        state = self[param] = ParamState(self)
        return state

    def __setitem__(self, param, state):
        self.version += 1
        if not isinstance(state, ParamState) or state._table is not self:
            state = ParamState(self, state)
        super().__setitem__(param, state)

    def __delitem__(self, param):
        self.version += 1
        super().__delitem__(param)

    def pop(self, *args):
        self.version += 1
        return super().pop(*args)

    def popitem(self):
        self.version += 1
        return super().popitem()

    def clear(self):
        self.version += 1
        super().clear()

    def update(self, *args, **kwargs):
        for param, state in dict(*args, **kwargs).items():
            self[param] = state

    def setdefault(self, param, default=None):
        if param not in self:
            self[param] = {} if default is None else default
        return self[param]

    def __ior__(self, other):
        self.update(other)
        return self

    def __reduce__(self):
        return _plain, (dict(self),)
