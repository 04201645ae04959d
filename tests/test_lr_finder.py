"""fusedlr.find_lr against torch-lr-finder, the suggestion rules' sources, and bit-for-bit restore."""

import math
import random
import subprocess
import sys

import pytest
import torch

import fusedlr
from fusedlr.lr_finder import find_lr, suggest
from fusedlr.schedules import WarmupCosine


def _regression(seed=0, n=256, batch=16):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    y = x @ torch.randn(8, 1, generator=gen) + 0.1 * torch.randn(n, 1, generator=gen)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _torch_lr_finder(model, optimizer, loader, **kwargs):
    torch_lr_finder = pytest.importorskip("torch_lr_finder")
    finder = torch_lr_finder.LRFinder(model, optimizer, torch.nn.functional.mse_loss)
    finder.range_test(loader, smooth_f=0.0, diverge_th=1e30, **kwargs)
    history = dict(finder.history)
    finder.reset()
    return history


@pytest.mark.parametrize("mode", ["exp", "linear"])
def test_same_sweep_and_losses_as_torch_lr_finder(mode):
    model, loader = _mlp(), _regression()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    reference = _torch_lr_finder(model, optimizer, loader, start_lr=1e-5, end_lr=1.0, num_iter=40, step_mode=mode)
    ours = find_lr(model, optimizer, loader, loss_fn=torch.nn.functional.mse_loss, start_lr=1e-5, end_lr=1.0,
                   num_steps=40, mode=mode, divergence=None, progress=False)  # fmt: skip
    assert len(ours.lrs) == len(reference["lr"]) == 40
    if mode == "exp":  # the same float64 operations: the same lrs, so the same losses, bit for bit
        assert ours.lrs == reference["lr"]
        assert ours.losses == reference["loss"]
    else:  # base * (1 + r * (ratio - 1)) against base + r * (end - base): equal to rounding
        assert ours.lrs == pytest.approx(reference["lr"], rel=1e-12)
        assert ours.losses == pytest.approx(reference["loss"], rel=1e-4)


def test_fused_optimizer_sweeps_on_its_counter(backend):
    """fusedlr.AdamW runs the sweep as a device schedule: the same lrs as torch-lr-finder and,
    since its step is torch's AdamW step, the same losses (to rounding)."""
    model, loader = _mlp(), _regression(n=128)
    reference = _torch_lr_finder(model, torch.optim.AdamW(model.parameters()), loader,
                                 start_lr=1e-4, end_lr=1.0, num_iter=12)  # fmt: skip
    optimizer = fusedlr.AdamW(model.parameters(), backend=backend, schedule=WarmupCosine(5, 50))
    ours = find_lr(model, optimizer, loader, loss_fn=torch.nn.functional.mse_loss, start_lr=1e-4, end_lr=1.0,
                   num_steps=12, divergence=None, progress=False, sync_every=5)  # fmt: skip
    assert ours.lrs == reference["lr"]
    assert ours.losses == pytest.approx(reference["loss"], rel=1e-5, abs=1e-7)
    assert optimizer.schedule == WarmupCosine(5, 50) and int(optimizer._schedule_step) == 0


@pytest.mark.parametrize("mode", ["exp", "linear"])
def test_range_test_ramp_on_the_device_matches_torch_lr_finders_formula(triton_backend, mode):
    """The sweep the kernels evaluate from the device counter (the finalize's schedule program)."""
    from fusedlr._triton import schedule_on_device
    from fusedlr.schedules import RangeTestRamp

    start, end, n = 1e-7, 10.0, 100
    ks = list(range(n))
    scale, offset = schedule_on_device(RangeTestRamp(end / start, n, mode), torch.tensor(ks, dtype=torch.int64))
    for k, s, o in zip(ks, scale.tolist(), offset.tolist()):
        r = k / (n - 1)  # torch_lr_finder.lr_finder.ExponentialLR / LinearLR.get_lr
        expected = start * (end / start) ** r if mode == "exp" else start + r * (end - start)
        assert start * s + o == pytest.approx(expected, rel=1e-12)


def _state_of(model, optimizer, scaler=None):
    """Everything a range test may change, as plain values."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    state = {
        i: {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
        for i, p in enumerate(model.parameters())
        if p in optimizer.state
    }
    return {
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "groups": groups,
        "state": state,
        "counter": (int(optimizer._schedule_step), optimizer._host_step, int(optimizer.skipped_steps))
        if isinstance(optimizer, fusedlr.AdamW)
        else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
    }


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict) and key in ("tensors",):
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
        elif key == "grads":
            assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a[key], b[key]))
        elif key == "state":
            assert a[key].keys() == b[key].keys()
            for i in a[key]:
                for k, v in a[key][i].items():
                    assert torch.equal(v, b[key][i][k]) if torch.is_tensor(v) else v == b[key][i][k]
        else:
            assert a[key] == b[key], key


class _Net(torch.nn.Module):
    """Buffers (batch norm), randomness (dropout), eval/train flags."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                        torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))  # fmt: skip

    def forward(self, x):
        return self.body(x)


def _trained(optimizer_kind, backend="torch"):
    torch.manual_seed(0)
    model = _Net()
    if optimizer_kind == "fused":
        opt = fusedlr.AdamW(model.parameters(), lr=3e-3, schedule=WarmupCosine(3, 40), max_grad_norm=1.0,
                            backend=backend)  # fmt: skip
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = _regression(n=64)
    for x, y in list(loader)[:3]:  # some state, a moved counter, grads left in place
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    model.body[0].eval()  # a flag the test's model.train() must not leave behind
    return model, opt, loader


def _train_more(model, opt, loader, steps=4):
    torch.manual_seed(123)
    for x, y in list(loader)[:steps]:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("optimizer_kind", ["fused", "fused-triton", "torch"])
def test_restores_everything_bit_for_bit(optimizer_kind):
    if optimizer_kind == "fused-triton" and "triton" not in fusedlr.available_backends():
        pytest.skip("the triton backend runs on CPU tensors under TRITON_INTERPRET=1")
    backend = "triton" if optimizer_kind == "fused-triton" else "torch"
    optimizer_kind = optimizer_kind.split("-")[0]
    model, opt, loader = _trained(optimizer_kind, backend)
    twin_model, twin_opt, _ = _trained(optimizer_kind, backend)
    before = _state_of(model, opt)
    torch.manual_seed(7)
    random.seed(7)
    rng_before = (torch.get_rng_state(), random.getstate())
    find_lr(model, opt, loader, loss_fn=torch.nn.functional.mse_loss, num_steps=25, progress=False)
    assert torch.equal(torch.get_rng_state(), rng_before[0]) and random.getstate() == rng_before[1]
    _assert_same(before, _state_of(model, opt))
    # Training on after the test is training on as if it never ran (caches, counters, states).
    assert all(
        torch.equal(a, b) for a, b in zip(_train_more(model, opt, loader), _train_more(twin_model, twin_opt, loader))
    )


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_restores_when_the_test_raises(error):
    model, opt, loader = _trained("fused")
    before = _state_of(model, opt)
    calls = []

    def step_fn(batch):
        calls.append(1)
        if len(calls) == 6:
            raise error("stop")
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)

    with pytest.raises(error):
        find_lr(model, opt, loader, step_fn=step_fn, num_steps=20, progress=False)
    _assert_same(before, _state_of(model, opt))


def test_restore_copy_can_live_on_the_device_too():
    model, opt, loader = _trained("fused")
    before = _state_of(model, opt)
    find_lr(model, opt, loader, loss_fn=torch.nn.functional.mse_loss, num_steps=10, snapshot="device", progress=False)
    _assert_same(before, _state_of(model, opt))
    with pytest.raises(ValueError, match="snapshot"):
        find_lr(model, opt, loader, loss_fn=torch.nn.functional.mse_loss, num_steps=10, snapshot="gpu")


def test_dict_batches_of_a_transformers_model_with_accumulation_and_grad_scaler():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (64, 16), generator=gen)
    batches = [{"input_ids": t, "labels": t} for t in tokens.split(8)]
    groups = fusedlr.param_groups(model, lr=1e-3, weight_decay=0.1, layer_decay=0.8)
    opt = fusedlr.AdamW(groups)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    before = _state_of(model, opt, scaler)
    result = find_lr(model, opt, batches, start_lr=1e-5, end_lr=10.0, num_steps=30, accumulation_steps=2,
                     grad_scaler=scaler, progress=False)  # fmt: skip
    _assert_same(before, _state_of(model, opt, scaler))
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in groups]
    assert len(result.lrs) >= 10 and result.lrs[0] == 1e-5
    assert all(math.isfinite(v) for v in result.smoothed_losses[:-1])
    # A new user trains with the suggestion: the loss goes down.
    lr = result.suggestion
    assert lr is not None and 1e-5 < lr < 10.0
    opt = fusedlr.AdamW(fusedlr.param_groups(model, lr=lr, weight_decay=0.1))
    losses = []
    for batch in batches * 3:
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-4:]) < sum(losses[:4])


def test_groups_keep_their_ratios_during_the_sweep():
    model, loader = _mlp(), _regression(n=64)
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.25}, {"params": model[2].parameters(), "lr": 1.0}])
    seen = []

    def step_fn(batch):
        seen.append([g["lr"] for g in opt.param_groups])
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)

    result = find_lr(model, opt, loader, step_fn=step_fn, start_lr=1e-4, end_lr=1e-1, num_steps=5, progress=False)
    assert [pair[1] for pair in seen] == result.lrs
    assert all(a == pytest.approx(0.25 * b, rel=1e-15) for a, b in seen)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 1.0]


def test_smoothing_and_divergence_stop():
    """Debiased average (fastai's AvgSmoothLoss: average / (1 - beta ** count)); stops once the
    smoothed loss exceeds 4x the best: SGD on a quadratic diverges past lr = 2."""
    w = torch.nn.Parameter(torch.tensor([3.0]))
    model = torch.nn.Module()
    model.w = w
    opt = torch.optim.SGD([w], lr=0.1)
    result = find_lr(model, opt, step_fn=lambda: (w**2).sum(), start_lr=1e-3, end_lr=1e3, num_steps=60,
                     progress=False, sync_every=7)  # fmt: skip
    assert result.stopped_early and len(result.lrs) < 60 and result.lrs[-1] > 1.0
    beta, expected, average = 0.98, [], 0.0
    for i, loss in enumerate(result.losses):
        average = beta * average + (1 - beta) * loss
        expected.append(average / (1 - beta ** (i + 1)))
    assert result.smoothed_losses == pytest.approx(expected, rel=1e-12)
    assert result.smoothed_losses[-1] > 4 * min(result.smoothed_losses[:-1])
    assert all(v <= 4 * min(result.smoothed_losses[: i + 1]) for i, v in enumerate(result.smoothed_losses[:-1]))
    assert float(w.detach()) == 3.0


# ----- suggestion rules on synthetic curves --------------------------------------------------------


def _grid(n=100, lo=-6.0, hi=1.0):
    return [10 ** (lo + (hi - lo) * i / (n - 1)) for i in range(n)]


def test_steep_finds_the_inflection_of_a_tanh_curve():
    lrs = _grid()
    center = 10 ** (-6.0 + 7.0 * 55 / 99)
    losses = [2.0 - math.tanh(math.log(lr / center)) for lr in lrs]
    assert suggest.steep(lrs, losses) == 55


def test_steep_is_lightnings_gradient_rule_in_log_lr():
    """Lightning's ``_LRFinder.suggestion`` with the log-lrs as its "lr" values is this rule."""
    lr_finder = pytest.importorskip("lightning.pytorch.tuner.lr_finder")
    gen = torch.Generator().manual_seed(3)
    lrs = _grid(80, -5, 0)
    losses = [2.0 - math.tanh(math.log(lr / 1e-3)) + 0.05 * float(torch.randn((), generator=gen)) for lr in lrs]
    finder = lr_finder._LRFinder("exponential", 1e-5, 1.0, 80)
    finder.results = {"lr": [math.log(lr) for lr in lrs], "loss": losses}
    best_log_lr = finder.suggestion(skip_begin=8, skip_end=5)
    ours = suggest.suggestions(lrs, losses, rules=("steep",), skip_start=8, skip_end=5)["steep"]
    assert math.log(ours) == pytest.approx(best_log_lr, abs=1e-12)


def test_valley_and_minimum_on_a_known_curve():
    # Flat, then a long strictly decreasing valley (points 20..69), then a climb.
    lrs = _grid()
    losses = [5.0] * 20 + [5.0 - 0.05 * (i + 1) for i in range(50)] + [2.5 + 0.3 * i for i in range(30)]
    # fastai: the longest decreasing run ends at 69 and starts (as fastai counts) at 69 - 51 = 18;
    # sections = 51 / 3 = 17; index = 18 + 17 + 8 = 43.
    assert suggest.valley(lrs, losses) == 43
    assert suggest.minimum(lrs, losses) == 69
    out = suggest.suggestions(lrs, losses, skip_start=0, skip_end=0)
    assert out["valley"] == lrs[43] and out["minimum"] == lrs[69] / 10
    assert out["steep"] == lrs[suggest.steep(lrs, losses)]


def test_non_finite_points_are_dropped_and_short_curves_give_none():
    lrs = _grid(30)
    losses = [3.0 - 0.05 * i for i in range(25)] + [float("nan"), float("inf"), 9.0, 9.0, 9.0]
    kept_lrs, kept = suggest.trimmed(lrs, losses, skip_start=0, skip_end=0)
    assert len(kept) == 28 and all(math.isfinite(v) for v in kept)
    assert suggest.suggestions(lrs[:1], losses[:1]) == {"steep": None, "valley": None, "minimum": None}


def test_plot_and_progress_bar(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    model, loader = _mlp(), _regression(n=64)
    result = find_lr(model, torch.optim.AdamW(model.parameters()), loader, loss_fn=torch.nn.functional.mse_loss,
                     num_steps=20, progress=True)  # fmt: skip
    path = tmp_path / "range_test.png"
    result.plot(path)
    assert path.stat().st_size > 10_000
    assert "suggestions" in repr(result)


def test_bad_arguments():
    model, loader = _mlp(), _regression(n=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="start_lr"):
        find_lr(model, opt, loader, loss_fn=torch.nn.functional.mse_loss, start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="num_steps"):
        find_lr(model, opt, loader, loss_fn=torch.nn.functional.mse_loss, num_steps=1)
    with pytest.raises(ValueError, match="loss_fn"):
        find_lr(model, opt, loader, num_steps=3, progress=False)
    assert opt.param_groups[0]["lr"] == 0.1


def test_import_fusedlr_imports_no_optional_package():
    code = (
        "import sys, fusedlr; "
        "names = ('matplotlib', 'transformers', 'torch_lr_finder', 'lightning', 'optuna'); "
        "bad = [m for m in names if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_shot_data_that_runs_out_ends_the_test_with_a_warning_and_changes_nothing():
    model, loader = _mlp(), _regression(n=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    batches = iter(list(loader))  # one pass only: 2 batches for 10 updates
    with pytest.warns(UserWarning, match="ran out after 2 of num_steps=10"):
        result = find_lr(model, opt, batches, loss_fn=torch.nn.functional.mse_loss, num_steps=10, progress=False)
    assert len(result.lrs) == len(result.losses) == 2 and result.lrs[0] == 1e-7
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.param_groups[0]["lr"] == 0.1 and not opt.state
    generator = (batch for batch in list(loader)[:1])  # not one whole update: nothing to return
    with pytest.raises(ValueError, match="before the first update"):
        find_lr(model, opt, generator, loss_fn=torch.nn.functional.mse_loss, accumulation_steps=2, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ----- restore: what the optimizer holds beyond params, states and groups -------------------------


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_schedule_free_sums_and_mode_are_restored(mode):
    """AdamWScheduleFree's running sums (lr_max, weight_sum, ...) live in an optimizer attribute;
    one left in eval mode is switched to train mode for the test and back."""
    model, loader = _mlp(), _regression(n=64)
    opt = fusedlr.AdamWScheduleFree(model.parameters(), lr=1e-2, backend="torch")
    opt.train()
    for x, y in list(loader)[:3]:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    getattr(opt, mode)()
    sums = opt._group_sums.clone()
    params = [p.detach().clone() for p in model.parameters()]
    state_dict = opt.state_dict()
    find_lr(model, opt, loader, loss_fn=torch.nn.functional.mse_loss, num_steps=12, progress=False)
    assert torch.equal(opt._group_sums, sums)
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert opt.param_groups[0]["train_mode"] == (mode == "train")
    assert opt.state_dict()["param_groups"] == state_dict["param_groups"]


@pytest.mark.parametrize("optimizer_kind", ["fused", "torch"])
def test_optimizer_params_outside_the_model_are_restored(optimizer_kind):
    """A learnable temperature used by loss_fn and trained by the optimizer, not in ``model``."""
    model, loader = _mlp(), _regression(n=64)
    temperature = torch.nn.Parameter(torch.tensor(1.0))
    params = list(model.parameters()) + [temperature]
    opt = fusedlr.AdamW(params, lr=1e-3) if optimizer_kind == "fused" else torch.optim.AdamW(params, lr=1e-3)
    result = find_lr(model, opt, loader, loss_fn=lambda out, y: torch.nn.functional.mse_loss(out * temperature, y),
                     num_steps=12, progress=False)  # fmt: skip
    assert len(result.lrs) > 1
    assert temperature.detach().item() == 1.0 and temperature.grad is None


@pytest.mark.parametrize("optimizer_kind", ["fused", "torch"])
def test_tensor_lr_and_betas_stay_the_callers_tensors(optimizer_kind):
    model, loader = _mlp(), _regression(n=64)
    lr, betas = torch.tensor(1e-3), (torch.tensor(0.9), torch.tensor(0.99))
    cls = fusedlr.AdamW if optimizer_kind == "fused" else torch.optim.AdamW
    opt = cls(model.parameters(), lr=lr, betas=betas)
    group_betas = opt.param_groups[0]["betas"]  # (torch.optim.AdamW makes a new tuple of the same tensors)
    find_lr(model, opt, loader, loss_fn=torch.nn.functional.mse_loss, num_steps=12, progress=False)
    group = opt.param_groups[0]
    assert group["lr"] is lr and group["betas"] is group_betas and all(a is b for a, b in zip(group["betas"], betas))
    assert lr.item() == pytest.approx(1e-3) and betas[1].item() == pytest.approx(0.99)


def test_an_interrupt_inside_step_leaves_no_grad_scaler_attributes():
    """GradScaler sets ``opt.grad_scale`` / ``opt.found_inf`` before a fusedlr step and deletes
    them after: a Ctrl-C inside the step leaves them, and later steps would read them."""
    model, opt, loader = _trained("fused")
    twin_model, twin_opt, _ = _trained("fused")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    names = set(vars(opt))
    calls = []

    def interrupt(optimizer, args, kwargs):  # a Ctrl-C that arrives during the third step
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    handle = opt.register_step_post_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        find_lr(model, opt, loader, loss_fn=torch.nn.functional.mse_loss, grad_scaler=scaler, num_steps=10,
                progress=False)  # fmt: skip
    handle.remove()
    assert set(vars(opt)) == names
    assert all(
        torch.equal(a, b) for a, b in zip(_train_more(model, opt, loader), _train_more(twin_model, twin_opt, loader))
    )


def test_a_loaders_own_shuffling_generator_is_restored():
    def first_batch(run_test):
        dataset = torch.utils.data.TensorDataset(torch.arange(40.0).unsqueeze(1).repeat(1, 8), torch.zeros(40, 1))
        generator = torch.Generator().manual_seed(0)
        loader = torch.utils.data.DataLoader(dataset, batch_size=5, shuffle=True, generator=generator)
        model = _mlp()
        if run_test:
            find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                    loss_fn=torch.nn.functional.mse_loss, num_steps=12, progress=False)  # fmt: skip
        return next(iter(loader))[0][:, 0].tolist()

    assert first_batch(True) == first_batch(False)


# ----- suggestions: repeated lrs, few points, one rule ----------------------------------------------


def test_repeated_lrs_of_skipped_updates_never_give_a_nan_steep():
    """A fusedlr sweep does not advance on an update a GradScaler skipped: the next point repeats
    the lr. torch.gradient with such spacing divides by 0; steep must not pick that NaN."""
    lrs = _grid(40)
    losses = [2.0 - math.tanh(math.log(lr / lrs[30])) for lr in lrs]
    repeated_lrs = lrs[:10] + [lrs[9]] + lrs[10:]  # update 10 was skipped
    repeated = losses[:10] + [losses[9] - 0.01] + losses[10:]
    ours = suggest.suggestions(repeated_lrs, repeated, skip_start=0, skip_end=0)
    assert ours == suggest.suggestions(lrs, losses[:9] + [losses[9] - 0.01] + losses[10:], skip_start=0, skip_end=0)
    assert ours["steep"] == lrs[30]


def test_fused_sweep_with_skipped_updates():
    torch.manual_seed(0)
    model, loader = _mlp(), _regression(n=256)
    opt = fusedlr.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0, growth_interval=1000)
    calls = []

    def loss_fn(out, y):  # every 4th batch: a term worth 0 whose scaled grad overflows: a skipped step
        calls.append(1)
        loss = torch.nn.functional.mse_loss(out, y)
        if len(calls) % 4 == 0:
            w = model[0].weight
            loss = loss + (w - w.detach()).sum() * 3e38
        return loss

    result = find_lr(model, opt, loader, loss_fn=loss_fn, grad_scaler=scaler, num_steps=40, beta=0.9,
                     divergence=None, progress=False)  # fmt: skip
    # Skipped updates repeat an lr (until the scale is low enough not to overflow), and the sweep
    # ends short of end_lr.
    assert sum(a == b for a, b in zip(result.lrs, result.lrs[1:])) >= 3 and result.lrs[-1] < 10.0
    last = dict(zip(result.lrs, result.smoothed_losses))  # one point per lr: the last
    assert result.suggestions == suggest.suggestions(list(last), list(last.values()))


def test_fewer_than_ten_points_give_no_suggestion_and_a_warning():
    model, loader = _mlp(), _regression(n=64)
    with pytest.warns(UserWarning, match="only 5 usable points"):
        result = find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                         loss_fn=torch.nn.functional.mse_loss, num_steps=5, progress=False)  # fmt: skip
    assert result.suggestion is None and set(result.suggestions.values()) == {None}
    lrs = _grid(10)
    assert suggest.suggestions(lrs, [1.0 / i for i in range(1, 11)])["minimum"] is not None


def test_suggest_takes_one_rule_name():
    lrs = _grid()
    losses = [2.0 - math.tanh(math.log(lr / 1e-3)) for lr in lrs]
    result = fusedlr.lr_finder.RangeTestResult(lrs, losses, losses)
    assert result.suggest("valley") == {"valley": result.suggest()["valley"]}
    with pytest.raises(ValueError, match="Unknown suggestion rule 'valey'"):
        result.suggest("valey")


# ----- model outputs and arguments ------------------------------------------------------------------


class _TupleLM(torch.nn.Module):
    """A Hugging Face model called with ``return_dict=False``: ``(loss, logits)`` with labels,
    ``(logits,)`` without."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 16)

    def forward(self, input_ids, labels=None):
        logits = self.head(self.embed(input_ids))
        if labels is None:
            return (logits,)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()), logits


def test_tuple_outputs_with_the_loss_first_and_a_short_error_without():
    torch.manual_seed(0)
    model = _TupleLM()
    tokens = torch.randint(0, 16, (8, 4, 6))
    opt = torch.optim.AdamW(model.parameters())
    result = find_lr(model, opt, [{"input_ids": t, "labels": t} for t in tokens], num_steps=12, progress=False)
    assert len(result.lrs) == 12
    with pytest.raises(ValueError, match="outputs hold no loss") as error:
        find_lr(model, opt, [{"input_ids": t} for t in tokens], num_steps=12, progress=False)
    assert len(str(error.value)) < 500 and "(4, 6, 16)" in str(error.value)


def test_bad_arguments_of_the_wrong_type():
    model, loader = _mlp(), _regression(n=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for bad in ({"sync_every": True}, {"accumulation_steps": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            find_lr(model, opt, loader, loss_fn=torch.nn.functional.mse_loss, progress=False, **bad)
    assert opt.param_groups[0]["lr"] == 0.1 and not opt.state


def test_an_attached_torch_scheduler_is_set_aside_during_a_fused_sweep_and_kept():
    """A torch scheduler on a fusedlr optimizer (schedule=None: the scheduler drives the lr) is not
    stepped by the test: no "both apply" warning during the sweep, and afterwards the scheduler,
    its step wrapper and the groups' initial_lr are as before and training goes on as a twin's."""
    import warnings

    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = _mlp()
        opt = fusedlr.AdamW(model.parameters(), lr=3e-3, backend="torch")
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (k + 1))
        runs.append((model, opt, scheduler))
    (model, opt, scheduler), (twin_model, twin_opt, twin_scheduler) = runs
    wrapper = opt.__dict__["step"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        find_lr(model, opt, _regression(), loss_fn=torch.nn.functional.mse_loss, num_steps=12, progress=False)
    assert opt.__dict__["step"] is wrapper and all("initial_lr" in group for group in opt.param_groups)
    for m, o, s in ((model, opt, scheduler), (twin_model, twin_opt, twin_scheduler)):
        for x, y in list(_regression())[:3]:
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
            s.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin_model.parameters()))


def _applied_lrs(inner):
    applied = []
    handle = inner.register_step_post_hook(lambda opt, args, kwargs: applied.append(float(opt.current_lr()[0])))
    return applied, handle


def _warm_fused(model, steps=3):
    opt = fusedlr.AdamW(model.parameters(), lr=1e-3, schedule=WarmupCosine(20, 100), backend="torch")
    for x, y in list(_regression())[:steps]:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return opt


def test_a_fused_optimizer_inside_accelerates_wrapper_is_swept_and_restored():
    """accelerate's AcceleratedOptimizer (what a Trainer holds once training started) keeps the
    fusedlr optimizer as ``.optimizer``: the sweep's lrs are the ones applied, and the inner
    optimizer's counter and states come back (the test steps through the wrapper)."""
    accelerate = pytest.importorskip("accelerate")
    model = _mlp()
    inner = _warm_fused(model)
    before = _state_of(model, inner)
    model, wrapped = accelerate.Accelerator(cpu=True).prepare(model, inner)
    applied, handle = _applied_lrs(inner)
    result = find_lr(model, wrapped, _regression(), loss_fn=torch.nn.functional.mse_loss, num_steps=12,
                     start_lr=1e-4, end_lr=1.0, progress=False)  # fmt: skip
    handle.remove()
    assert applied == pytest.approx(result.lrs, rel=1e-9)
    _assert_same(before, _state_of(model, inner))


def test_a_fused_optimizer_inside_lightnings_wrapper_is_swept_and_restored():
    """Lightning's LightningOptimizer poses as a subclass of the optimizer's class with copies of
    its attributes: the sweep must reach the optimizer it wraps (``._optimizer``)."""
    L = pytest.importorskip("lightning")
    seen = {}

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _mlp()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, index):
            return torch.nn.functional.mse_loss(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return _warm_fused(self.net)

        def on_train_start(self):
            wrapped = self.optimizers()
            inner = wrapped.optimizer
            seen["before"] = _state_of(self.net, inner)
            seen["applied"], handle = _applied_lrs(inner)
            seen["result"] = find_lr(self, wrapped, _regression(), loss_fn=torch.nn.functional.mse_loss,
                                     num_steps=12, start_lr=1e-4, end_lr=1.0, progress=False)  # fmt: skip
            handle.remove()
            seen["after"] = _state_of(self.net, inner)

    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(Module(), _regression())
    assert seen["applied"] == pytest.approx(seen["result"].lrs, rel=1e-9)
    _assert_same(seen["before"], seen["after"])
