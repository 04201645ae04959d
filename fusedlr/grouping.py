"""Parameter groups: which tensors get weight decay, and layer-wise learning-rate decay.

``param_groups(model, lr=..., weight_decay=...)`` returns groups that any torch optimizer (and
fusedlr's) accepts. Two jobs, each as practitioners' references do it:

* **No weight decay** for biases and normalisation weights (Hugging Face Trainer's
  ``get_decay_parameter_names``: ``nn.LayerNorm`` modules, and names matching ``bias``,
  ``layernorm``, ``rmsnorm``, ``norm`` as a name segment or ``_norm``), for every tensor with
  fewer than 2 dimensions (nanoGPT's rule, and MAE's ``p.ndim == 1``), for every module whose
  class is a torch norm or whose class name says ``Norm`` (custom RMSNorms), for the names a
  model lists in ``no_weight_decay()`` (timm's convention, which MAE passes on), optionally for
  embeddings, and for the user's own patterns.
* **Layer-wise lr decay** (BEiT, MAE ``param_groups_lrd``, ELECTRA): the layer id of a parameter
  comes from its module path (``blocks.N``, ``layers.N``, ``layer.N``, ``h.N``, ``block.N``,
  ``resblocks.N`` -> ``N + 1``), embeddings are layer 0 and everything else (final norm,
  head) the top layer ``num_layers + 1``; the group lr is ``lr * layer_decay ** (num_layers + 1
  - id)``. Every such container counts, wherever it sits (the outermost one in each name): a
  head's ``layers.N`` (DETR's MLP) counts as blocks too; pass ``layer_id`` for such models.
  Each group also carries that factor as ``lr_scale`` (MAE's key), so code that sets
  ``group["lr"] = base * group["lr_scale"]`` works, and since the group lr already holds it,
  fusedlr's device schedules and torch's schedulers (which multiply each group's own lr) keep
  the ratios.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
import re
import warnings

import torch

# Hugging Face Trainer.get_decay_parameter_names' name patterns, searched in the lower-cased name.
HF_NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
_TORCH_NORMS = tuple(
    getattr(torch.nn, name)
    for name in (
        "LayerNorm",
        "RMSNorm",
        "GroupNorm",
        "LocalResponseNorm",
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "SyncBatchNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
    )  # fmt: skip
    if hasattr(torch.nn, name)
)
_BLOCK = re.compile(r"(?:^|\.)(?:blocks|layers|layer|h|block|resblocks)\.(\d+)(?:\.|$)")
# Parameters that sit at the bottom of a transformer although no module is named "embed...".
_EMBEDDING_NAMES = ("cls_token", "dist_token", "mask_token", "reg_token", "register_tokens")


def is_norm_module(module: torch.nn.Module) -> bool:
    """A torch normalisation layer, or any module whose class name contains "norm" (RMSNorm,
    T5LayerNorm, LlamaRMSNorm, ...)."""
    return isinstance(module, _TORCH_NORMS) or "norm" in type(module).__name__.lower()


def _norm_parameter(param: torch.Tensor, module: torch.nn.Module) -> bool:
    """A norm layer's own scale or shift: every parameter of a torch norm layer, and those of
    fewer than 2 dimensions of a class named "norm" (a fused ``LayerNormLinear`` or a
    ``NormHead`` also holds a projection matrix, which the Trainer decays)."""
    return isinstance(module, _TORCH_NORMS) or (param.ndim < 2 and is_norm_module(module))


def _owners(model: torch.nn.Module) -> dict:
    """Parameter name -> the module that holds it."""
    return {
        f"{prefix}.{name}" if prefix else name: module
        for prefix, module in model.named_modules()
        for name in module._parameters
    }


def is_embedding(name: str, module: torch.nn.Module) -> bool:
    """An ``nn.Embedding``'s table, or a parameter whose module path says embed (patch_embed,
    pos_embed, wte/wpe are under ``nn.Embedding``, embeddings.*), or a ViT token (cls_token...)."""
    if isinstance(module, torch.nn.Embedding):
        return True
    segments = name.lower().split(".")
    # GPT-NeoX names its output head `embed_out`: an unembedding, at the top.
    return any("embed" in s and not s.endswith("_out") for s in segments) or segments[-1] in _EMBEDDING_NAMES


def layer_id_from_name(name: str, module: torch.nn.Module, num_layers: int) -> int:
    """MAE's ``get_layer_id_for_vit`` generalised: embeddings 0, block ``N`` -> ``N + 1``, the rest
    ``num_layers + 1``."""
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    if is_embedding(name, module):
        return 0
    return num_layers + 1


def count_layers(names) -> int:
    """Number of blocks: one more than the largest block index found in the names (0 if none)."""
    indices = [int(m.group(1)) for m in map(_BLOCK.search, names) if m]
    return max(indices) + 1 if indices else 0


def _match(name: str, pattern) -> bool:
    """The ``no_decay`` rule: a string is an exact name or a glob over the whole name
    (``fnmatch``, case-sensitive: ``"*.scale"``); a compiled ``re.Pattern`` is searched in the
    name (``re.compile(r"\\.gamma$")``); a callable is asked ``pattern(name) -> bool``."""
    if isinstance(pattern, str):
        return fnmatch.fnmatchcase(name, pattern)  # (an exact name is a glob matching itself)
    if isinstance(pattern, re.Pattern):
        return pattern.search(name) is not None
    return bool(pattern(name))


def _matches(name: str, patterns) -> bool:
    return any(_match(name, pattern) for pattern in patterns)


def _resolve_patterns(patterns, names) -> list:
    """``patterns`` as ``_match`` reads them, for these parameter names. A string that matches no
    name exactly or as a glob was, before strings were only names and globs, searched as a
    regular expression: it still is, with a FutureWarning, when as a regex it matches a name;
    otherwise it matches nothing, which a UserWarning reports (a typo?)."""
    resolved = []
    for pattern in patterns:
        if not isinstance(pattern, (str, re.Pattern)) and not callable(pattern):
            raise TypeError(f"Invalid no_decay pattern: {pattern!r} (expected a str, a re.Pattern or a callable)")
        if isinstance(pattern, str) and not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            try:
                regex = re.compile(pattern)
            except re.error:
                regex = None
            if regex is not None and any(regex.search(n) for n in names):
                warnings.warn(f"no_decay={pattern!r} matches no parameter name exactly or as a glob; it is read as a "
                              f"regular expression, which strings will stop being: pass re.compile({pattern!r})",
                              FutureWarning, stacklevel=3)  # fmt: skip
                pattern = regex
            else:
                warnings.warn(f"no_decay={pattern!r} matches no trainable parameter name (names and globs match the "
                              "whole name; a regular expression is a re.compile(...) pattern)",
                              UserWarning, stacklevel=3)  # fmt: skip
        resolved.append(pattern)
    return resolved


def _check_number(name: str, value, *, low: float = 0.0, high: float | None = None, low_inclusive=True) -> None:
    """A real number (not a bool) in range, refused before anything is built, as torch's
    optimizers refuse a negative or NaN lr."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"Invalid {name}: {value!r} (expected a number)")
    above = value >= low if low_inclusive else value > low
    if not (math.isfinite(value) and above and (high is None or value <= high)):
        bound = f"{low} {'<=' if low_inclusive else '<'} {name}" + (f" <= {high}" if high is not None else "")
        raise ValueError(f"Invalid {name}: {value!r} (need a finite {bound})")


def _model_no_weight_decay(model) -> set:
    listed = getattr(model, "no_weight_decay", None)
    return set(listed()) if callable(listed) else set()


def no_decay_reason(name, param, module, *, no_decay=(), decay_1d=False, embeddings=False, model_list=()):
    """Why ``name`` gets no weight decay (a short label for the summary), or None when it does."""
    if _matches(name, no_decay):
        return "user pattern"
    if name in model_list:
        return "model.no_weight_decay()"
    if _norm_parameter(param, module):
        return "norm module"
    if any(re.search(pattern, name.lower()) for pattern in HF_NO_DECAY_PATTERNS):
        return "name (bias/norm)"
    if param.ndim < 2 and not decay_1d:
        return "ndim < 2"
    if embeddings and is_embedding(name, module):
        return "embedding"
    return None


class ParamGroups(list):
    """The groups (a plain list of dicts for the optimizer) that prints as a table.

    Each group has ``params``, ``lr``, ``weight_decay``, ``lr_scale``, ``layer_id`` and ``name``;
    ``param_names[i]`` lists the names in group ``i``.
    """

    param_names: list

    def table(self) -> str:
        rows = [("group", "layer", "lr", "lr scale", "weight decay", "tensors", "parameters")]
        for group in self:
            count = sum(p.numel() for p in group["params"])
            rows.append((group["name"], str(group["layer_id"]), f"{group['lr']:.4g}", f"{group['lr_scale']:.4g}",
                         f"{group['weight_decay']:g}", str(len(group["params"])), f"{count:,}"))  # fmt: skip
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                 for row in rows]  # fmt: skip
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    __str__ = table

    def __repr__(self) -> str:
        return f"ParamGroups({len(self)} groups)\n{self.table()}"


def param_groups(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    no_decay=(),
    decay_1d: bool = False,
    no_decay_embeddings: bool = False,
    layer_decay: float | None = None,
    layer_id=None,
    num_layers: int | None = None,
) -> ParamGroups:
    """Groups of ``model``'s trainable parameters for any torch optimizer.

    ``no_decay``: extra parameters to exempt from weight decay (one, or a list): a string is an
    exact name or a glob over the whole name (``"head.weight"``, ``"*.scale"``), a compiled
    ``re.Pattern`` is searched in the name, a callable is asked ``name -> bool``.
    ``decay_1d=True`` decays 1-D tensors that no other rule exempts (Hugging Face's behaviour;
    the default exempts them, as nanoGPT and MAE do). ``no_decay_embeddings`` exempts embeddings.

    ``layer_decay`` (e.g. 0.75) scales the lr of layer ``id`` by ``layer_decay ** (num_layers +
    1 - id)``; ids come from ``layer_id(name, param) -> int`` when given, else from the module
    path (see ``layer_id_from_name``); ``num_layers`` (the number of blocks) is counted from the
    names when not given. Without ``layer_decay`` there are at most two groups (decay, no decay).
    With ``layer_decay`` but no ``layer_id`` and no block found in the names, a warning says so.
    """
    if isinstance(lr, torch.Tensor):  # a one-element tensor lr, as the optimizers take it
        if lr.numel() != 1 or not lr.is_floating_point():
            raise ValueError(f"Tensor lr must be a 1-element floating-point tensor; got {lr!r}")
        _check_number("lr", float(lr))
    else:
        _check_number("lr", lr)
    _check_number("weight_decay", weight_decay)
    if layer_decay is not None:
        _check_number("layer_decay", layer_decay, high=1.0, low_inclusive=False)
    if isinstance(no_decay, (str, re.Pattern)) or callable(no_decay):
        no_decay = (no_decay,)
    owners = _owners(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = _resolve_patterns(no_decay, [n for n, _ in named])
    if layer_decay is not None and layer_id is None and not count_layers(n for n, _ in named):
        warnings.warn("layer_decay: no transformer blocks found in the parameter names (blocks.N, layers.N, "
                      "layer.N, h.N, block.N, resblocks.N): only embeddings get a lower lr. Pass "
                      "layer_id=lambda name, param: ... (and num_layers=...) for this model.",
                      UserWarning, stacklevel=2)  # fmt: skip
    if num_layers is None:
        num_layers = count_layers(n for n, _ in named)
    model_list = _model_no_weight_decay(model)
    groups: dict = {}
    names: dict = {}
    for name, param in named:
        module = owners.get(name)
        reason = no_decay_reason(name, param, module, no_decay=no_decay, decay_1d=decay_1d,
                                 embeddings=no_decay_embeddings, model_list=model_list)  # fmt: skip
        decays = reason is None
        if layer_decay is None:
            lid, scale = 0, 1.0
        else:
            lid = layer_id(name, param) if layer_id is not None else layer_id_from_name(name, module, num_layers)
            scale = float(layer_decay) ** (num_layers + 1 - lid)
        key = (lid, decays)
        if key not in groups:
            label = (
                ("decay" if decays else "no_decay")
                if layer_decay is None
                else f"layer_{lid}_{'decay' if decays else 'no_decay'}"
            )
            groups[key] = {"params": [], "lr": lr * scale, "weight_decay": weight_decay if decays else 0.0,
                           "lr_scale": scale, "layer_id": lid, "name": label}  # fmt: skip
            names[key] = []
        groups[key]["params"].append(param)
        names[key].append(name)
    order = sorted(groups, key=lambda k: (k[0], not k[1]))
    result = ParamGroups(groups[k] for k in order)
    result.param_names = [names[k] for k in order]
    return result
