"""torch.distributed.checkpoint loads by key into the states that the loading optimizer made
(DCP calls step() with zero grads first): a run saved without a master copy loaded with
``allow_partial_load=True`` into an optimizer with one would keep the master that step made from
the weights before loading; it is made again from the loaded weights (one process, no process
group, as the README's DCP recipe)."""

import pytest
import torch

import fusedlr

dcp = pytest.importorskip("torch.distributed.checkpoint")
from torch.distributed.checkpoint import DefaultLoadPlanner  # noqa: E402
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(64, 80).to(torch.bfloat16)


def _train(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        opt.step()


def _round_trip(tmp_path, make_saving, make_loading):
    model = _model()
    opt = make_saving(model.parameters())
    _train(model, opt, 5, 1)
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp_path))
    loaded = _model()
    loading = make_loading(loaded.parameters())
    model_sd, optim_sd = get_state_dict(loaded, loading)  # DCP makes the loader's states here
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(tmp_path), planner=DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(loaded, loading, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return model, loaded, loading


def test_a_master_copy_the_checkpoint_lacks_is_made_from_the_loaded_weights(tmp_path):
    """torch.optim.AdamW on bf16 params, resumed by fusedlr with an fp32 master copy: the master
    is the loaded weights (not the weights before loading, which DCP's state-making step saw)."""
    model, loaded, opt = _round_trip(
        tmp_path,
        lambda ps: torch.optim.AdamW(ps, lr=1e-2),
        lambda ps: fusedlr.AdamW(ps, lr=1e-2, master_weights=True, backend="torch"),
    )
    assert torch.equal(loaded.weight, model.weight)
    assert torch.equal(opt.state[loaded.weight]["master_param"], model.weight.detach().float())
    assert int(opt._schedule_step) == 5


def test_same_options_resume_bit_for_bit(tmp_path):
    options = dict(state_dtype="int8", master_weights="split", backend="torch")
    model, loaded, opt = _round_trip(
        tmp_path, lambda ps: fusedlr.AdamW(ps, lr=1e-2, **options), lambda ps: fusedlr.AdamW(ps, lr=1e-2, **options)
    )
    assert int(opt._schedule_step) == 5
    assert torch.equal(loaded.weight, model.weight)


def test_a_param_the_saved_run_never_stepped_keeps_fresh_states(tmp_path):
    """Not every made state is a missing one: a param that never had a grad in the saved run has
    no state in the checkpoint, and keeps the fresh states DCP's step made (step 0), as torch's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    opt = fusedlr.AdamW(model.parameters(), lr=1e-2, backend="torch")
    for _ in range(3):
        model[0](torch.randn(4, 8)).sum().backward()  # the second layer never gets a grad
        opt.step()
        opt.zero_grad()
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp_path))
    torch.manual_seed(1)
    loaded = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    loading = fusedlr.AdamW(loaded.parameters(), lr=1e-2, backend="torch")
    model_sd, optim_sd = get_state_dict(loaded, loading)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(tmp_path), planner=DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(loaded, loading, model_state_dict=state["model"], optim_state_dict=state["optim"])
    assert float(loading.state[loaded[1].weight]["step"]) == 0
    assert float(loading.state[loaded[0].weight]["step"]) == 3


def test_a_failed_load_leaves_the_check_for_the_corrected_one():
    """A load that is refused changes nothing, the pending check of DCP's made states included:
    the corrected retry still makes the master copy again from the loaded weights."""
    import copy

    from torch.distributed.checkpoint.state_dict import _init_optim_state

    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(4, 4).to(torch.bfloat16))
    opt = fusedlr.AdamW([param], lr=1e-3, master_weights=True, backend="torch")
    _init_optim_state(opt)  # what get_state_dict does first: states made from the weights as they are
    template = opt.state_dict()  # DCP fills these tensors in place...
    with torch.no_grad():
        param.fill_(2.0)  # ...and loads the model's weights
    bad = copy.copy(template)
    bad["state"] = {0: {k: v for k, v in template["state"][0].items() if k != "exp_avg_sq"}}
    with pytest.raises(KeyError, match="exp_avg_sq"):
        opt.load_state_dict(bad)
    opt.load_state_dict(template)
    assert torch.equal(opt.state[param]["master_param"], torch.full((4, 4), 2.0))
