"""Malformed state dicts: a clear error, nothing changed, no crash, on every backend (issue 11).

Two sources of bad input: a catalogue of the mistakes that happen (a foreign optimizer's
state, a truncated group, a step of the wrong shape, an invalid hyperparameter, a corrupt
counter), and hypothesis-driven corruption of a valid state dict at a random place. After a
refused load the optimizer must step exactly as a twin that never saw it.
"""

import copy
import os

import pytest
import torch
from helpers import clone_params, make_grads, make_params, run_steps
from unchanged import assert_unchanged, snapshot

import fusedlr

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CLEAR_ERRORS = (ValueError, KeyError, TypeError, RuntimeError)
SHAPES = [(4,), (3, 2), (5,)]


def make_optimizer(backend, params, cls=fusedlr.AdamW):
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.05, "agc_clip_factor": 0.5}]
    kw = dict(amsgrad=True) if cls is fusedlr.AdamW else {}
    return cls(groups, lr=0.1, max_grad_norm=1.0, backend=backend, **kw)


def trained_pair(backend, cls=fusedlr.AdamW):
    """An optimizer after two steps, and a twin in the same state."""
    params = make_params(SHAPES)
    opt = make_optimizer(backend, params, cls)
    run_steps(opt, params, make_grads(params, 2))
    twin_params = clone_params(params)
    twin = make_optimizer(backend, twin_params, cls)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch shares loaded tensors: copy
    return params, opt, twin_params, twin


def assert_refused_cleanly(opt, params, twin, twin_params, bad):
    before = snapshot(opt)
    with pytest.raises(CLEAR_ERRORS) as info:
        opt.load_state_dict(bad)
    message = str(info.value)
    assert message and "Traceback" not in message
    assert_unchanged(opt, before)
    grads = make_grads(params, 1, seed=9)
    run_steps(opt, params, grads)
    run_steps(twin, twin_params, grads)
    for p, q in zip(params, twin_params):
        assert torch.equal(p, q)


def _case(name, mutate):
    return pytest.param(mutate, id=name)


def _assign(*path, value):
    def mutate(sd):
        target = sd
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return sd

    return mutate


def _delete(*path):
    def mutate(sd):
        target = sd
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return sd

    return mutate


CATALOGUE = [
    _case("not a dict", lambda sd: [sd]),
    _case("None", lambda sd: None),
    _case("no state", _delete("state")),
    _case("no param_groups", _delete("param_groups")),
    _case("state is a list", _assign("state", value=[1, 2])),
    _case("param_groups is a dict", _assign("param_groups", value={"params": [0]})),
    _case("group without params", _delete("param_groups", 0, "params")),
    _case("group params an int", _assign("param_groups", 0, "params", value=3)),
    _case("one group missing", lambda sd: {**sd, "param_groups": sd["param_groups"][:1]}),
    _case("group one param short", lambda sd: _assign("param_groups", 0, "params", value=[0])(sd)),
    _case("index listed twice", lambda sd: _assign("param_groups", 1, "params", value=[0])(sd)),
    _case("state of an unknown index", _assign("state", 99, value={})),
    _case("state entry a tensor", _assign("state", 0, value=torch.zeros(4))),
    _case("no exp_avg", _delete("state", 1, "exp_avg")),
    _case("no exp_avg_sq", _delete("state", 2, "exp_avg_sq")),
    _case("no step", _delete("state", 2, "step")),
    _case("exp_avg wrong shape", _assign("state", 1, "exp_avg", value=torch.zeros(7))),
    _case("exp_avg integer", _assign("state", 1, "exp_avg", value=torch.zeros(3, 2, dtype=torch.int64))),
    _case("exp_avg a list", _assign("state", 0, "exp_avg", value=[0.0] * 4)),
    _case("exp_avg_sq complex", _assign("state", 0, "exp_avg_sq", value=torch.zeros(4, dtype=torch.complex64))),
    _case("step two elements", _assign("state", 0, "step", value=torch.tensor([1.0, 2.0]))),
    _case("step negative", _assign("state", 0, "step", value=torch.tensor(-1.0))),
    _case("step nan", _assign("state", 0, "step", value=float("nan"))),
    _case("step a string", _assign("state", 0, "step", value="two")),
    _case("step None", _assign("state", 0, "step", value=None)),
    _case("step bool", _assign("state", 0, "step", value=True)),
    _case("lr negative", _assign("param_groups", 0, "lr", value=-1.0)),
    _case("lr a string", _assign("param_groups", 1, "lr", value="0.1")),
    _case("lr None", _assign("param_groups", 0, "lr", value=None)),
    _case("lr a 2-element tensor", _assign("param_groups", 0, "lr", value=torch.tensor([0.1, 0.2]))),
    _case("beta1 = 1", _assign("param_groups", 0, "betas", value=(1.0, 0.9))),
    _case("betas a float", _assign("param_groups", 0, "betas", value=0.9)),
    _case("weight_decay nan", _assign("param_groups", 1, "weight_decay", value=float("nan"))),
    _case("eps negative", _assign("param_groups", 0, "eps", value=-1.0)),
    _case("agc_clip_factor 0", _assign("param_groups", 1, "agc_clip_factor", value=0.0)),
    _case("state_dtype int8", _assign("param_groups", 0, "state_dtype", value=torch.int8)),
    _case("seed negative", _assign("param_groups", 0, "seed", value=-1)),
    _case(
        "master and stochastic",
        lambda sd: _assign("param_groups", 0, "stochastic_rounding", value=True)(
            _assign("param_groups", 0, "master_weights", value=True)(sd)
        ),
    ),  # fmt: skip
    _case("counter negative", _assign("schedule_step", value=torch.tensor(-3))),
    _case("counter fractional", _assign("schedule_step", value=torch.tensor(1.5))),
    _case("counter a string", _assign("schedule_step", value="3")),
    _case("counter two elements", _assign("schedule_step", value=torch.tensor([1, 2]))),
]


@pytest.mark.parametrize("mutate", CATALOGUE)
def test_malformed_state_dict_is_refused_and_changes_nothing(backend, mutate):
    params, opt, twin_params, twin = trained_pair(backend)
    bad = mutate(copy.deepcopy(opt.state_dict()))
    assert_refused_cleanly(opt, params, twin, twin_params, bad)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_delete("state", 0, "exp_avg"), id="no exp_avg"),
        pytest.param(_assign("state", 1, "exp_avg", value=torch.zeros(2)), id="exp_avg wrong shape"),
        pytest.param(_assign("param_groups", 0, "betas", value=(0.9, 1.0)), id="beta2 = 1"),
    ],
)
def test_malformed_lion_state_dict_is_refused_and_changes_nothing(backend, mutate):
    params, opt, twin_params, twin = trained_pair(backend, fusedlr.Lion)
    bad = mutate(copy.deepcopy(opt.state_dict()))
    if not bad["state"][0]:  # an emptied state is a fresh one (torch's rule): make it foreign instead
        bad["state"][0]["momentum_buffer"] = torch.zeros(4)
    assert_refused_cleanly(opt, params, twin, twin_params, bad)


# ----- random corruption -----------------------------------------------------------------------

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.lists(st.integers(0, 3), max_size=3),
    st.sampled_from(
        [
            torch.zeros(()),
            torch.zeros(2),
            torch.ones(4),
            torch.zeros(3, 2),
            torch.ones(5, dtype=torch.float64),
            torch.tensor([1.0, 2.0]),
            torch.tensor(-1.0),
            torch.tensor(3),
            torch.zeros(4, dtype=torch.int32),
            torch.zeros(4, dtype=torch.complex64),
            torch.tensor(float("nan")),
        ]
    ),
)


def _places(sd):
    """Every (container, key) of a (possibly already corrupted) state dict that a corruption may
    replace or delete."""
    places = [(sd, key) for key in sd]
    state = sd.get("state")
    if isinstance(state, dict):
        for key, entry in state.items():
            places.append((state, key))
            if isinstance(entry, dict):
                places += [(entry, name) for name in entry]
    groups = sd.get("param_groups")
    if isinstance(groups, list):
        for group in groups:
            if isinstance(group, dict):
                places += [(group, name) for name in group]
    return places


EXAMPLES = int(os.environ.get("FUSEDLR_HYPOTHESIS_EXAMPLES", "40"))


@pytest.mark.parametrize("cls", [fusedlr.AdamW, fusedlr.Lion])
def test_randomly_corrupted_state_dicts_never_crash_nor_half_load(backend, cls):
    params, opt, twin_params, twin = trained_pair(backend, cls)
    valid = copy.deepcopy(opt.state_dict())

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(data=st.data())
    def corrupt_and_load(data):
        bad = copy.deepcopy(valid)
        for _ in range(data.draw(st.integers(1, 3), label="corruptions")):
            if not _places(bad):
                break
            container, key = data.draw(st.sampled_from(_places(bad)), label="place")
            if data.draw(st.booleans(), label="delete"):
                del container[key]
            else:
                container[key] = data.draw(JUNK, label="value")
        before = snapshot(opt)
        try:
            opt.load_state_dict(bad)
        except CLEAR_ERRORS as error:
            assert str(error)
            assert_unchanged(opt, before)
            return
        # Accepted (a corruption can be valid: another valid lr, an extra key): a step then
        # works or fails cleanly, and the optimizer is restored for the next example.
        try:
            run_steps(opt, params, make_grads(params, 1, seed=3))
        except CLEAR_ERRORS as error:
            assert str(error)
        with torch.no_grad():
            for p, q in zip(params, before["params"]):
                p.copy_(q)
        opt.load_state_dict(copy.deepcopy(valid))

    corrupt_and_load()
    twin_grads = make_grads(params, 1, seed=9)
    opt.load_state_dict(copy.deepcopy(valid))
    with torch.no_grad():
        for p, q in zip(params, twin_params):
            p.copy_(q)
    run_steps(opt, params, twin_grads)
    run_steps(twin, twin_params, twin_grads)
    for p, q in zip(params, twin_params):
        assert torch.equal(p, q)
