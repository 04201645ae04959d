"""Hugging Face ``Trainer`` with a fusedlr optimizer: one schedule, one clip, the applied lr logged.

``FusedTrainer`` is a drop-in ``Trainer`` (``FusedTrainerMixin`` for other Trainer subclasses,
e.g. ``class MyTrainer(FusedTrainerMixin, SFTTrainer)``). Why a subclass and not a callback or an
``optimizer_cls_and_kwargs``: the Trainer computes a grad norm before every ``optimizer.step()``
(``_clip_grad_norm`` when ``max_grad_norm > 0``, else ``_get_grad_norm``, each a pass over every
grad) and builds its own LambdaLR, and neither can be switched off from outside. The mixin

* builds ``fusedlr.AdamW`` (or ``fusedlr.Lion`` for ``optim="lion_32bit"``) through the Trainer's
  own ``create_optimizer``, so the param groups are the Trainer's (no weight decay for biases and
  norms, ``get_decay_parameter_names``), with ``learning_rate``, ``adam_beta1/2``,
  ``adam_epsilon``, ``weight_decay`` and ``max_grad_norm`` as the fused clip;
* turns ``lr_scheduler_type`` + warmup + ``lr_scheduler_kwargs`` into the matching
  ``fusedlr.schedules`` schedule (``schedule_from_args``) and puts ``AppliedLRScheduler`` in the
  scheduler's slot, so the Trainer logs the lr fusedlr applied to each update;
* skips the Trainer's clipping and norm pass and logs ``opt.last_grad_norm`` (the pre-clip
  norm of the fused step) as ``grad_norm``: a callback copies it, on the device, into the
  tensor the Trainer logs.

``max_grad_norm=0`` turns the clip off and logs no grad norm (pass ``max_grad_norm=float("inf")``
for the norm without clipping: one fused read of the grads).
"""

from __future__ import annotations

import json
import weakref

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import SchedulerType

from .. import schedules as S
from ..lr_scheduler import AppliedLRScheduler, unwrap_fused
from ..optim import AdamW, Lion

if not (hasattr(Trainer, "_clip_grad_norm") and hasattr(Trainer, "_get_grad_norm")):  # transformers < 5
    raise ImportError(
        "fusedlr.integrations.transformers needs a transformers whose Trainer computes grad norms in "
        "_clip_grad_norm/_get_grad_norm (5.0 or newer): pip install 'fusedlr[integrations]'"
    )

_ADAMW_NAMES = ("adamw_torch", "adamw_torch_fused")
_LION_NAMES = ("lion_32bit",)


def _scheduler_kwargs(args) -> dict:
    kwargs = args.lr_scheduler_kwargs or {}
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs)
    return dict(kwargs)


def _take(kwargs: dict, name: str, allowed: tuple) -> dict:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(
            f"lr_scheduler_type={name!r} takes lr_scheduler_kwargs {list(allowed)}; got unexpected {unknown}"
        )
    return kwargs


def _min_lr_ratio(kwargs: dict, base_lr: float) -> float:
    min_lr, min_lr_rate = kwargs.get("min_lr"), kwargs.get("min_lr_rate")
    if min_lr is not None and min_lr_rate is not None:
        raise ValueError("Only one of min_lr or min_lr_rate should be set")
    if min_lr is not None:
        return min_lr / base_lr
    if min_lr_rate is None:
        raise ValueError("One of min_lr or min_lr_rate should be set through the `lr_scheduler_kwargs`")
    return min_lr_rate


def schedule_from_args(args, num_training_steps: int, base_lr: float | None = None) -> S.Schedule:
    """The fusedlr schedule equal to the scheduler ``transformers.get_scheduler`` builds from
    ``args.lr_scheduler_type``, ``args.get_warmup_steps(num_training_steps)`` and
    ``args.lr_scheduler_kwargs`` (``base_lr``: the optimizer's default lr, which the polynomial
    and min-lr schedules read; ``args.learning_rate`` when None). ``reduce_lr_on_plateau`` and
    ``greedy`` react to metrics on the host and have no device schedule: a ValueError."""
    name = SchedulerType(args.lr_scheduler_type).value
    base_lr = args.learning_rate if base_lr is None else base_lr
    warmup = args.get_warmup_steps(num_training_steps)
    total = num_training_steps
    kw = _scheduler_kwargs(args)
    if name == "linear":
        _take(kw, name, ())
        return S.WarmupLinear(warmup, total)
    if name == "cosine":
        _take(kw, name, ("num_cycles",))
        return S.WarmupCosine(warmup, total, num_cycles=kw.get("num_cycles", 0.5))
    if name == "cosine_with_restarts":
        _take(kw, name, ("num_cycles",))
        cycles = kw.get("num_cycles", 1)
        return S.WarmupCosineHardRestarts(warmup, total, int(cycles) if cycles == int(cycles) else cycles)
    if name == "polynomial":
        _take(kw, name, ("lr_end", "power"))
        return S.WarmupPolynomial(warmup, total, base_lr, kw.get("lr_end", 1e-7), kw.get("power", 1.0))
    if name == "constant":  # get_scheduler ignores warmup and kwargs here
        return S.Constant()
    if name == "constant_with_warmup":  # and the kwargs here
        return S.WarmupConstant(warmup)
    if name == "inverse_sqrt":
        _take(kw, name, ("timescale",))
        return S.InverseSqrt(warmup, timescale=kw.get("timescale"))
    if name == "cosine_with_min_lr":
        _take(kw, name, ("num_cycles", "min_lr", "min_lr_rate"))
        ratio = _min_lr_ratio(kw, base_lr)
        return S.WarmupCosine(warmup, total, num_cycles=kw.get("num_cycles", 0.5), min_lr_ratio=ratio)
    if name == "cosine_warmup_with_min_lr":
        _take(kw, name, ("num_cycles", "min_lr", "min_lr_rate", "warmup_lr_rate"))
        ratio = _min_lr_ratio(kw, base_lr)
        return S.WarmupCosineLrRate(
            warmup, total, kw.get("num_cycles", 0.5), min_lr_ratio=ratio, warmup_lr_ratio=kw.get("warmup_lr_rate")
        )
    if name == "warmup_stable_decay":
        allowed = ("num_decay_steps", "num_stable_steps", "warmup_type", "decay_type", "min_lr_ratio", "num_cycles")
        _take(kw, name, allowed)
        if "num_decay_steps" not in kw:
            raise TypeError("lr_scheduler_type='warmup_stable_decay' needs lr_scheduler_kwargs['num_decay_steps']")
        return S.WarmupStableDecay(
            warmup,
            kw["num_decay_steps"],
            total_steps=total,
            stable_steps=kw.get("num_stable_steps"),
            warmup_type=kw.get("warmup_type", "linear"),
            decay_type=kw.get("decay_type", "cosine"),
            min_lr_ratio=kw.get("min_lr_ratio", 0.0),
            num_cycles=kw.get("num_cycles", 0.5),
        )
    raise ValueError(
        f"lr_scheduler_type={name!r} changes the lr from metrics on the host and has no fusedlr schedule; "
        "use one of linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup, inverse_sqrt, "
        "cosine_with_min_lr, cosine_warmup_with_min_lr, warmup_stable_decay (or the plain Trainer)"
    )


def optimizer_cls_and_kwargs(args) -> tuple[type, dict]:
    """The fusedlr optimizer class and keyword arguments for ``args`` (without the schedule,
    which needs the number of training steps): what ``Trainer(optimizer_cls_and_kwargs=...)``
    takes, so that the Trainer makes its usual param groups."""
    optim = str(getattr(args.optim, "value", args.optim))
    clip = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None
    common = dict(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.weight_decay)
    if optim in _ADAMW_NAMES:
        return AdamW, dict(common, eps=args.adam_epsilon, max_grad_norm=clip)
    if optim in _LION_NAMES:
        return Lion, dict(common, max_grad_norm=clip)
    raise ValueError(
        f"FusedTrainer builds fusedlr.AdamW (optim={' or '.join(map(repr, _ADAMW_NAMES))}) or fusedlr.Lion "
        f"(optim='lion_32bit'); got optim={optim!r}"
    )


class _GradNormFromFusedStep(TrainerCallback):
    """After each optimizer step, before the Trainer logs: the fused step's pre-clip norm copied
    (on the device, no sync) into the tensor the Trainer holds as this step's grad norm."""

    def __init__(self, trainer):
        self._trainer = weakref.ref(trainer)

    def on_optimizer_step(self, args, state, control, **kwargs):
        trainer = self._trainer()
        slot = getattr(trainer, "_fusedlr_grad_norm", None)
        if slot is not None:
            norm = unwrap_fused(trainer.optimizer).last_grad_norm
            if norm is not None:
                slot.copy_(norm)
            trainer._fusedlr_grad_norm = None


class FusedTrainerMixin:
    """Mix into a ``transformers.Trainer`` subclass (first in the bases) to train with fusedlr.

    A fusedlr optimizer passed in ``optimizers=(opt, None)`` keeps its own schedule and clip;
    one without a schedule gets the one the arguments describe, and ``max_grad_norm`` from the
    arguments when it has none.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fusedlr_grad_norm = None
        self._fusedlr_schedule_from_args = False
        self.add_callback(_GradNormFromFusedStep(self))

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.optimizer_cls_and_kwargs is None:
            self.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs(self.args)
        return super().create_optimizer(model)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            fused = unwrap_fused(optimizer if optimizer is not None else self.optimizer)
            if fused.schedule is None or self._fusedlr_schedule_from_args:
                fused.schedule = schedule_from_args(self.args, num_training_steps, fused.defaults["lr"])
                self._fusedlr_schedule_from_args = True
            clip = self.args.max_grad_norm
            if fused.max_grad_norm is None and clip and clip > 0:
                fused.max_grad_norm = float(clip)
            self.lr_scheduler = AppliedLRScheduler(fused)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _clip_grad_norm(self, model):
        """No clip here: the fused step clips. Returns the tensor the norm will be copied into."""
        return self._fused_norm_slot()

    def _get_grad_norm(self, model, grad_norm=None):
        """No pass over the grads: the fused step's norm (None when it computes none)."""
        return grad_norm if grad_norm is not None else self._fused_norm_slot()

    def _fused_norm_slot(self):
        fused = unwrap_fused(self.optimizer)
        if fused.max_grad_norm is None and not any(g["agc_clip_factor"] is not None for g in fused.param_groups):
            return None
        self._fusedlr_grad_norm = torch.full((), float("nan"), device=fused._schedule_step.device)
        return self._fusedlr_grad_norm


class FusedTrainer(FusedTrainerMixin, Trainer):
    """``transformers.Trainer`` with a fusedlr optimizer built from its ``TrainingArguments``:
    ``FusedTrainer(model=model, args=args, train_dataset=...)`` where you had ``Trainer(...)``."""
