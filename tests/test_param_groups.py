"""fusedlr.param_groups against Hugging Face Trainer's grouping and MAE's param_groups_lrd."""

import re
import warnings

import pytest
import torch

import fusedlr
from fusedlr.schedules import WarmupCosine

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def _gpt2():
    config = transformers.GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def _bert():
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16)  # fmt: skip
    return transformers.BertForMaskedLM(config)


def _decayed(groups) -> set:
    return {n for g, names in zip(groups, groups.param_names) if g["weight_decay"] > 0 for n in names}


def _trainer_decay_names(model) -> set:
    # Trainer.get_decay_parameter_names does not read self.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return set(transformers.Trainer.get_decay_parameter_names(None, model)) & trainable


@pytest.mark.parametrize("make_model", [_gpt2, _bert], ids=["gpt2", "bert"])
@pytest.mark.parametrize("decay_1d", [False, True])
def test_no_decay_matches_hugging_face_trainer(make_model, decay_1d):
    model = make_model()
    groups = fusedlr.param_groups(model, lr=1e-3, weight_decay=0.1, decay_1d=decay_1d)
    assert _decayed(groups) == _trainer_decay_names(model)
    assert len(groups) == 2 and [g["name"] for g in groups] == ["decay", "no_decay"]
    # Every trainable parameter exactly once (tied lm_head / wte counted once, as named_parameters does).
    listed = [p for g in groups for p in g["params"]]
    assert len({id(p) for p in listed}) == len(listed) == len(list(model.parameters()))


def test_trainer_builds_the_same_optimizer_groups():
    """The groups Trainer.create_optimizer builds (decay / no decay, in its own words)."""
    model = _bert()
    decay = set(transformers.Trainer.get_decay_parameter_names(None, model))
    trainer_groups = [
        {n for n, p in model.named_parameters() if n in decay and p.requires_grad},
        {n for n, p in model.named_parameters() if n not in decay and p.requires_grad},
    ]
    ours = fusedlr.param_groups(model, lr=1e-3, weight_decay=0.01)
    assert [set(names) for names in ours.param_names] == trainer_groups


# ----- a timm-style ViT and MAE's param_groups_lrd (util/lr_decay.py of facebookresearch/mae) -------


class _Block(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim)
        self.attn = torch.nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(), torch.nn.Linear(2 * dim, dim))


class _PatchEmbed(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, dim, kernel_size=4, stride=4)


class _ViT(torch.nn.Module):
    """timm's VisionTransformer names: patch_embed.proj, cls_token, pos_embed, blocks.N, norm, head."""

    def __init__(self, dim=16, depth=4, classes=10):
        super().__init__()
        self.patch_embed = _PatchEmbed(dim)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 17, dim))
        self.blocks = torch.nn.ModuleList([_Block(dim) for _ in range(depth)])
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, classes)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token", "dist_token"}


def _mae_param_groups_lrd(model, weight_decay=0.05, no_weight_decay_list=(), layer_decay=0.75):
    """MAE's util/lr_decay.py, param_groups_lrd and get_layer_id_for_vit, as published."""

    def get_layer_id_for_vit(name, num_layers):
        if name in ["cls_token", "pos_embed"]:
            return 0
        elif name.startswith("patch_embed"):
            return 0
        elif name.startswith("blocks"):
            return int(name.split(".")[1]) + 1
        else:
            return num_layers

    param_groups = {}
    num_layers = len(model.blocks) + 1
    layer_scales = list(layer_decay ** (num_layers - i) for i in range(num_layers + 1))
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim == 1 or n in no_weight_decay_list:
            g_decay, this_decay = "no_decay", 0.0
        else:
            g_decay, this_decay = "decay", weight_decay
        layer_id = get_layer_id_for_vit(n, num_layers)
        group_name = "layer_%d_%s" % (layer_id, g_decay)  # noqa: UP031 (as published)
        if group_name not in param_groups:
            param_groups[group_name] = {"lr_scale": layer_scales[layer_id], "weight_decay": this_decay, "params": []}
        param_groups[group_name]["params"].append(p)
    return param_groups


def test_layer_decay_matches_mae_on_a_vit():
    model = _ViT()
    model.head.bias.requires_grad_(False)  # frozen params are left out, as MAE does
    mae = _mae_param_groups_lrd(model, 0.05, model.no_weight_decay(), 0.75)
    ours = fusedlr.param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    assert {g["name"] for g in ours} == set(mae)
    for group in ours:
        reference = mae[group["name"]]
        assert [id(p) for p in group["params"]] == [id(p) for p in reference["params"]]
        assert group["lr_scale"] == reference["lr_scale"]
        assert group["weight_decay"] == reference["weight_decay"]
        assert group["lr"] == 1e-3 * reference["lr_scale"]


def test_layer_ids_of_gpt2_bert_and_llama_style_paths():
    gpt2 = fusedlr.param_groups(_gpt2(), lr=1.0, weight_decay=0.1, layer_decay=0.5)
    ids = {n: g["layer_id"] for g, names in zip(gpt2, gpt2.param_names) for n in names}
    assert ids["transformer.wte.weight"] == ids["transformer.wpe.weight"] == 0
    assert ids["transformer.h.0.attn.c_attn.weight"] == 1 and ids["transformer.h.2.mlp.c_fc.bias"] == 3
    assert ids["transformer.ln_f.weight"] == 4
    assert {g["layer_id"]: g["lr"] for g in gpt2} == {0: 0.5**4, 1: 0.5**3, 2: 0.5**2, 3: 0.5, 4: 1.0}
    bert = fusedlr.param_groups(_bert(), lr=1.0, weight_decay=0.1, layer_decay=0.5)
    ids = {n: g["layer_id"] for g, names in zip(bert, bert.param_names) for n in names}
    assert ids["bert.embeddings.LayerNorm.weight"] == 0 and ids["bert.encoder.layer.1.output.dense.weight"] == 2
    assert ids["cls.predictions.transform.dense.weight"] == 3


def test_gpt_neox_output_head_is_the_top_layer():
    model = torch.nn.Module()
    model.embed_in = torch.nn.Embedding(10, 4)
    model.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])
    model.embed_out = torch.nn.Linear(4, 10, bias=False)
    groups = fusedlr.param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5)
    ids = {n: g["layer_id"] for g, names in zip(groups, groups.param_names) for n in names}
    assert ids == {"embed_in.weight": 0, "layers.0.weight": 1, "layers.0.bias": 1, "layers.1.weight": 2,
                   "layers.1.bias": 2, "embed_out.weight": 3}  # fmt: skip


class _RMSNorm(torch.nn.Module):
    """A custom RMSNorm (Llama style): no torch norm class, a 1-D "weight"."""

    def __init__(self, dim):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))


class _ScaleNorm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.g = torch.nn.Parameter(torch.ones(1))


class _Llama(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(50, 8)
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleDict({"input_layernorm": _RMSNorm(8), "proj": torch.nn.Linear(8, 8, bias=False)})
            for _ in range(2)
        )
        self.scale_norm = _ScaleNorm()
        self.gate = torch.nn.Parameter(torch.ones(8))  # 1-D, not a norm, not a bias
        self.lm_head = torch.nn.Linear(8, 50, bias=False)


def test_no_decay_rules_by_module_type_dimension_embeddings_and_user_patterns():
    model = _Llama()
    groups = fusedlr.param_groups(model, lr=1.0, weight_decay=0.1, decay_1d=True)
    assert _decayed(groups) == {"embed_tokens.weight", "layers.0.proj.weight", "layers.1.proj.weight", "gate",
                                "lm_head.weight"}  # fmt: skip
    groups = fusedlr.param_groups(model, lr=1.0, weight_decay=0.1)  # 1-D tensors exempt (nanoGPT)
    assert "gate" not in _decayed(groups)
    groups = fusedlr.param_groups(model, lr=1.0, weight_decay=0.1, no_decay_embeddings=True,
                                  no_decay=[re.compile("lm_head")])  # fmt: skip
    assert _decayed(groups) == {"layers.0.proj.weight", "layers.1.proj.weight"}
    groups = fusedlr.param_groups(model, lr=1.0, weight_decay=0.1, no_decay=["layers.*.proj.weight"])
    assert _decayed(groups) == {"embed_tokens.weight", "lm_head.weight"}
    groups = fusedlr.param_groups(model, lr=1.0, weight_decay=0.1, no_decay=lambda name: name.startswith("lm"))
    assert "lm_head.weight" not in _decayed(groups)


class _Patterns(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = torch.nn.Module()
        self.attn.scale = torch.nn.Parameter(torch.ones(4, 4))
        self.head = torch.nn.Linear(4, 4)
        self.lm_head = torch.nn.Linear(4, 4)


def _exempt_2d(groups) -> set:
    return {n for g, names in zip(groups, groups.param_names) if not g["weight_decay"] for n in names
            if not n.endswith("bias")}  # fmt: skip


def test_no_decay_strings_are_names_or_globs_and_regexes_are_compiled():
    model = _Patterns()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for pattern, exempt in [
            ("*.scale", {"attn.scale"}),  # the README's glob: a string is not searched as a regex
            (("head.weight",), {"head.weight"}),  # an exact name: not lm_head.weight
            ("*head.weight", {"head.weight", "lm_head.weight"}),
            (re.compile(r"head\.weight$"), {"head.weight", "lm_head.weight"}),  # a regex: searched
            ([re.compile(r"^head\.")], {"head.weight"}),
            (lambda name: name.startswith("lm_"), {"lm_head.weight"}),
        ]:
            groups = fusedlr.param_groups(model, lr=1.0, weight_decay=0.1, no_decay=pattern)
            assert _exempt_2d(groups) == exempt, pattern
    # A string that matches nothing as a name or glob but as a regex: still a regex, deprecated.
    with pytest.warns(FutureWarning, match=r"re.compile\('lm_.ead'\)"):
        groups = fusedlr.param_groups(model, lr=1.0, weight_decay=0.1, no_decay="lm_.ead")
    assert _exempt_2d(groups) == {"lm_head.weight"}
    with pytest.warns(UserWarning, match="matches no trainable parameter"):
        groups = fusedlr.param_groups(model, lr=1.0, weight_decay=0.1, no_decay=["[", "neck"])
    assert _exempt_2d(groups) == set()
    with pytest.raises(TypeError, match="no_decay"):
        fusedlr.param_groups(model, lr=1.0, weight_decay=0.1, no_decay=[3])


def test_bad_numbers_are_refused():
    model = _Llama()
    for bad, error in [({"lr": -1.0}, ValueError), ({"lr": float("nan")}, ValueError), ({"lr": "1e-3"}, TypeError),
                       ({"weight_decay": -0.1}, ValueError), ({"layer_decay": True}, TypeError),
                       ({"layer_decay": 0.0}, ValueError)]:  # fmt: skip
        arguments = {"lr": 1e-3, "weight_decay": 0.1, **bad}
        with pytest.raises(error, match=next(iter(bad))):
            fusedlr.param_groups(model, **arguments)


def test_layer_decay_without_blocks_warns():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with pytest.warns(UserWarning, match="no transformer blocks found.*layer_id="):
        groups = fusedlr.param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5)
    assert {g["lr"] for g in groups} == {1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a layer_id function: nothing to warn about
        fusedlr.param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5, layer_id=lambda n, p: 1, num_layers=1)


def test_user_layer_ids_and_num_layers():
    model = _Llama()
    ids = lambda name, p: 1 if name.startswith("layers") else 3
    groups = fusedlr.param_groups(model, lr=1.0, weight_decay=0.0, layer_decay=0.5, layer_id=ids, num_layers=2)
    assert {g["layer_id"]: g["lr_scale"] for g in groups} == {1: 0.25, 3: 1.0}
    with pytest.raises(ValueError, match="layer_decay"):
        fusedlr.param_groups(model, lr=1.0, weight_decay=0.0, layer_decay=1.5)


def test_summary_table():
    model = _ViT()
    groups = fusedlr.param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    text = str(groups)
    lines = text.splitlines()
    assert lines[0].split() == ["group", "layer", "lr", "lr", "scale", "weight", "decay", "tensors", "parameters"]
    assert len(lines) == len(groups) + 2
    total = sum(int(line.split()[-1].replace(",", "")) for line in lines[2:])
    assert total == sum(p.numel() for p in model.parameters())
    assert "layer_5_no_decay" in text and "ParamGroups" in repr(groups)


@pytest.mark.parametrize("make_optimizer", ["torch", "fused"])
def test_optimizers_and_schedules_keep_the_layer_ratios(make_optimizer):
    model = _ViT(depth=2)
    groups = fusedlr.param_groups(model, lr=1e-2, weight_decay=0.05, layer_decay=0.5)
    if make_optimizer == "torch":
        opt = torch.optim.AdamW(groups)
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(2, 10))
        for _ in range(4):
            opt.step()
            scheduler.step()
        lrs = [g["lr"] for g in opt.param_groups]
    else:
        opt = fusedlr.AdamW(groups, schedule=WarmupCosine(2, 10))
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()  # the extra keys (lr_scale, layer_id, name) travel with the groups
        opt.load_state_dict(opt.state_dict())
        lrs = [opt.schedule.lr(4, g["lr"]) for g in opt.param_groups]
    for group, lr in zip(opt.param_groups, lrs):
        assert lr == pytest.approx(lrs[-1] * group["lr_scale"], rel=1e-12)
    assert [g["lr_scale"] for g in opt.param_groups] == [g["lr_scale"] for g in groups]


def test_a_matrix_in_a_class_named_norm_keeps_its_decay():
    """The class-name rule ("norm" in the name: custom RMSNorms) exempts a module's scale and
    shift, not a projection matrix that a fused class holds beside them (Transformer Engine's
    LayerNormLinear), which the Trainer decays."""

    class LayerNormLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer_norm_weight = torch.nn.Parameter(torch.ones(8))
            self.weight = torch.nn.Parameter(torch.randn(16, 8))

    model = torch.nn.Sequential(LayerNormLinear())
    groups = fusedlr.param_groups(model, lr=1e-3, weight_decay=0.1)
    decayed = {n for g, names in zip(groups, groups.param_names) if g["weight_decay"] for n in names}
    assert decayed == {"0.weight"}


def test_a_tensor_lr_is_taken_as_the_optimizers_take_it():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    groups = fusedlr.param_groups(model, lr=torch.tensor(1e-3), weight_decay=0.1)
    assert all(float(group["lr"]) == pytest.approx(1e-3) for group in groups)
    with pytest.raises(ValueError, match="1-element"):
        fusedlr.param_groups(model, lr=torch.tensor([1e-3, 2e-3]), weight_decay=0.1)
