"""fusedlr in the Hugging Face Trainer (transformers, CPU): FusedTrainer against the Trainer's own
AdamW + LambdaLR + clip on a tiny GPT-2 built from a config (no download), the logged lr and grad
norm, checkpoint resume, and every lr_scheduler_type against transformers.get_scheduler."""

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402
from transformers.optimization import get_scheduler  # noqa: E402

import fusedlr  # noqa: E402
from fusedlr.integrations.transformers import FusedTrainer, optimizer_cls_and_kwargs, schedule_from_args  # noqa: E402

STEPS = 10


class Sequences(torch.utils.data.Dataset):
    """Token sequences that follow t -> (5t + 3) mod 64, made here: nothing to download."""

    def __init__(self, count=40, length=16, vocab=64):
        gen = torch.Generator().manual_seed(0)
        start = torch.randint(vocab, (count, 1), generator=gen)
        steps = torch.arange(length)
        self.tokens = (start * 5**steps + 3 * (5**steps - 1) // 4) % vocab

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


def tiny_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    return GPT2LMHeadModel(config)


def training_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=STEPS,
        learning_rate=3e-3,
        warmup_steps=3,
        lr_scheduler_type="cosine",
        weight_decay=0.1,
        max_grad_norm=0.5,  # small enough to clip on most steps
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def train(trainer_cls, tmp_path, resume=None, **overrides):
    model = tiny_gpt2()
    trainer = trainer_cls(model=model, args=training_args(tmp_path, **overrides), train_dataset=Sequences())
    trainer.train(resume_from_checkpoint=resume)
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    return trainer, model, steps


def _weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_weights_match(model, ref_weights):
    for name, weight in _weights(model).items():
        expected = ref_weights[name]
        if name.endswith("attn.c_attn.bias"):  # [query | key | value] biases
            # A bias added to every key shifts all of a query's attention logits alike, which softmax
            # ignores: its gradient is rounding noise (about 1e-10), which Adam's normalisation turns
            # into steps of about lr * 1e-2, so the last bit of the clip coefficient (the norms are
            # summed in another order) shows there. The query and value biases agree as all else does.
            key = slice(32, 64)
            torch.testing.assert_close(weight[key], expected[key], rtol=0, atol=1e-5, msg=name)
            weight, expected = torch.cat([weight[:32], weight[64:]]), torch.cat([expected[:32], expected[64:]])
        torch.testing.assert_close(weight, expected, rtol=0, atol=2e-7, msg=name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The plain Trainer: its default torch AdamW, its LambdaLR, its clip_grad_norm_."""
    _, model, steps = train(Trainer, tmp_path_factory.mktemp("reference"))
    return _weights(model), steps


def test_fused_trainer_matches_the_trainer(tmp_path, reference, monkeypatch):
    ref_weights, ref_steps = reference
    calls = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(1) or real_clip(*a, **k))
    trainer, model, steps = train(FusedTrainer, tmp_path)
    assert not calls, "the Trainer's own norm pass ran"

    opt = trainer.optimizer.optimizer  # accelerate's AcceleratedOptimizer around the fusedlr one
    assert isinstance(opt, fusedlr.AdamW) and opt.max_grad_norm == 0.5
    assert isinstance(trainer.lr_scheduler, fusedlr.AppliedLRScheduler)
    assert opt.schedule == fusedlr.schedules.WarmupCosine(3, STEPS)
    # The Trainer's param groups: biases, LayerNorms (and GPT-2's ln_f) without weight decay.
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("bias" in names[id(p)] or "ln_" in names[id(p)] for p in no_decay["params"])

    assert len(steps) == len(ref_steps) == STEPS
    for mine, theirs in zip(steps, ref_steps):
        assert mine["step"] == theirs["step"]
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-6)
        # The lr each update applied (the Trainer reads it between optimizer.step and scheduler.step).
        assert mine["learning_rate"] == pytest.approx(theirs["learning_rate"], rel=1e-12, abs=0)
        assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-6)
    assert [s["learning_rate"] for s in steps[:3]] == [0.0, 1e-3, 2e-3]
    assert max(s["grad_norm"] for s in steps) > 0.5  # the clip was active
    _assert_weights_match(model, ref_weights)


def test_resume_from_checkpoint_continues_identically(tmp_path):
    _, straight, _ = train(FusedTrainer, tmp_path / "straight")
    train(FusedTrainer, tmp_path / "first", save_strategy="steps", save_steps=4)
    checkpoint = tmp_path / "first" / "checkpoint-4"
    assert (checkpoint / "optimizer.pt").exists() and (checkpoint / "scheduler.pt").exists()
    trainer, resumed, steps = train(FusedTrainer, tmp_path / "first", resume=str(checkpoint))
    assert [s["step"] for s in steps][-1] == STEPS
    assert int(trainer.optimizer.optimizer._schedule_step) == STEPS
    for name, weight in _weights(resumed).items():
        torch.testing.assert_close(weight, _weights(straight)[name], rtol=0, atol=0, msg=name)


def test_without_clipping_no_norm_pass_and_no_norm_logged(tmp_path, monkeypatch):
    calls = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(1) or real_clip(*a, **k))
    trainer, _, steps = train(FusedTrainer, tmp_path, max_grad_norm=0.0, max_steps=3)
    assert not calls and trainer.optimizer.optimizer.max_grad_norm is None
    assert all("grad_norm" not in s for s in steps)
    trainer, _, steps = train(FusedTrainer, tmp_path, max_grad_norm=math.inf, max_steps=3)
    assert not calls and all(math.isfinite(s["grad_norm"]) and s["grad_norm"] > 0 for s in steps)


def test_lion_and_refused_optimizers(tmp_path):
    cls, kwargs = optimizer_cls_and_kwargs(training_args(tmp_path, optim="lion_32bit"))
    assert cls is fusedlr.Lion and kwargs["betas"] == (0.9, 0.999) and kwargs["max_grad_norm"] == 0.5
    with pytest.raises(ValueError, match="optim='adafactor'"):
        optimizer_cls_and_kwargs(training_args(tmp_path, optim="adafactor"))


SCHEDULER_CASES = [
    ("linear", {}),
    ("cosine", {}),
    ("cosine", {"num_cycles": 1.5}),
    ("cosine_with_restarts", {"num_cycles": 3}),
    ("polynomial", {"lr_end": 1e-5, "power": 2.0}),
    ("constant", {}),
    ("constant_with_warmup", {}),
    ("inverse_sqrt", {}),
    ("inverse_sqrt", {"timescale": 7}),
    ("cosine_with_min_lr", {"min_lr_rate": 0.1}),
    ("cosine_with_min_lr", {"min_lr": 1e-4, "num_cycles": 0.7}),
    ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.05}),
    ("cosine_warmup_with_min_lr", {"min_lr": 2e-4, "warmup_lr_rate": 0.3}),
    ("warmup_stable_decay", {"num_decay_steps": 12}),
    (
        "warmup_stable_decay",
        {
            "num_decay_steps": 10,
            "num_stable_steps": 15,
            "warmup_type": "cosine",
            "decay_type": "1-sqrt",
            "min_lr_ratio": 0.1,
        },
    ),  # fmt: skip
    ("warmup_stable_decay", {"num_decay_steps": 8, "decay_type": "linear", "min_lr_ratio": 0.2}),
]


@pytest.mark.parametrize("warmup", [0, 6])
@pytest.mark.parametrize("name, kwargs", SCHEDULER_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SCHEDULER_CASES)])
def test_every_scheduler_type_matches_transformers(tmp_path, name, kwargs, warmup):
    total, lr = 40, 1e-3
    args = training_args(tmp_path, lr_scheduler_type=name, lr_scheduler_kwargs=kwargs, warmup_steps=warmup,
                         learning_rate=lr)  # fmt: skip
    schedule = schedule_from_args(args, total)
    params = [torch.nn.Parameter(torch.zeros(1))]
    hf = get_scheduler(name, torch.optim.SGD(params, lr=lr), warmup, total, scheduler_specific_kwargs=kwargs)
    for k in range(total + 25):
        expected = lr * hf.lr_lambdas[0](k)
        assert schedule.lr(k, lr) == pytest.approx(expected, rel=1e-14, abs=1e-18), k


@pytest.mark.parametrize("name", ["reduce_lr_on_plateau", "greedy"])
def test_metric_driven_schedulers_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="no fusedlr schedule"):
        schedule_from_args(training_args(tmp_path, lr_scheduler_type=name, eval_strategy="steps"), 10)


def test_unknown_scheduler_kwargs_are_refused_as_transformers_does(tmp_path):
    args = training_args(tmp_path, lr_scheduler_type="cosine", lr_scheduler_kwargs={"min_lr": 0.1})
    with pytest.raises(TypeError, match="unexpected"):
        schedule_from_args(args, 10)


def test_a_fusedlr_optimizer_passed_in_gets_the_arguments_schedule_and_clip(tmp_path):
    model = tiny_gpt2()
    opt = fusedlr.AdamW(model.parameters(), lr=3e-3)
    args = training_args(tmp_path, max_steps=4)
    trainer = FusedTrainer(model=model, args=args, train_dataset=Sequences(), optimizers=(opt, None))
    trainer.train()
    assert opt.schedule == fusedlr.schedules.WarmupCosine(3, 4) and opt.max_grad_norm == 0.5
    assert int(opt._schedule_step) == 4


def test_the_plain_trainer_stacking_its_scheduler_on_a_fusedlr_schedule_warns(tmp_path):
    model = tiny_gpt2()
    opt = fusedlr.AdamW(model.parameters(), lr=3e-3, schedule=fusedlr.schedules.WarmupCosine(3, 4))
    trainer = Trainer(model=model, args=training_args(tmp_path, max_steps=4), train_dataset=Sequences(),
                      optimizers=(opt, None))  # fmt: skip
    with pytest.warns(UserWarning, match="both apply"):
        trainer.train()


def test_a_plain_trainer_checkpoint_resumed_by_fused_trainer(tmp_path, reference):
    """Migration mid-run: the Trainer's torch AdamW + LambdaLR checkpoint (decayed lr, initial_lr,
    step counts) resumed by FusedTrainer continues as the uninterrupted plain Trainer run."""
    ref_weights, ref_steps = reference
    train(Trainer, tmp_path, save_strategy="steps", save_steps=4)
    trainer, model, steps = train(FusedTrainer, tmp_path, resume=str(tmp_path / "checkpoint-4"))
    opt = trainer.optimizer.optimizer
    assert int(opt._schedule_step) == STEPS and all("initial_lr" not in g for g in opt.param_groups)
    resumed = [s for s in steps if s["step"] > 4]
    assert [s["step"] for s in resumed] == list(range(5, STEPS + 1))
    for mine, theirs in zip(resumed, ref_steps[4:]):
        assert mine["learning_rate"] == pytest.approx(theirs["learning_rate"], rel=1e-12, abs=0)
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-6)
    _assert_weights_match(model, ref_weights)
