"""Everything a refused call must leave as it was: params, state, groups and the counters."""

import torch


def snapshot(opt):
    params = [p for group in opt.param_groups for p in group["params"]]
    return dict(
        params=[p.detach().clone() for p in params],
        state={
            i: {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state.get(p, {}).items()}
            for i, p in enumerate(params)
        },  # fmt: skip
        groups=[{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
        group_params=[[id(p) for p in g["params"]] for g in opt.param_groups],
        counter=opt._schedule_step.clone(),
        host_step=opt._host_step,
    )


def assert_unchanged(opt, before):
    after = snapshot(opt)
    assert after["group_params"] == before["group_params"]
    assert after["groups"] == before["groups"]
    for p, q in zip(after["params"], before["params"]):
        assert torch.equal(p, q)
    assert after["state"].keys() == before["state"].keys()
    for i, state in after["state"].items():
        assert state.keys() == before["state"][i].keys(), i
        for k, v in state.items():
            assert torch.equal(v, before["state"][i][k]), (i, k)
    assert torch.equal(after["counter"], before["counter"]) and after["host_step"] == before["host_step"]
