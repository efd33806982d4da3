"""Trainable sets of each stage, and the optimizer's per-component learning rates."""

import logging
from types import SimpleNamespace

import pytest
import torch

from share4v.constants import IMAGE_TOKEN_INDEX
from share4v.model.builder import load_pretrained_model
from share4v.train.optim import param_groups
from share4v.train.trainable import TrainablePlan, apply_trainable, plan_from_args, vit_encoder_layers


def model_args(**overrides):
    defaults = dict(
        tune_mm_mlp_adapter=False,
        freeze_backbone=False,
        tune_entire_model=False,
        tune_vision_tower=False,
        tune_vit_from_layer=-1,
    )
    return SimpleNamespace(**{**defaults, **overrides})


def training_args(**overrides):
    return SimpleNamespace(**{"lora_enable": False, "freeze_mm_mlp_adapter": False, **overrides})


@pytest.fixture
def model(tiny_ckpt):
    return load_pretrained_model(str(tiny_ckpt), None, None, device="cpu")[1]


def trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_stage_1_trains_llm_projector_and_later_vit_layers(model, caplog):
    plan = plan_from_args(model_args(tune_entire_model=True, tune_vit_from_layer=1), training_args())
    assert plan == TrainablePlan(llm=True, lm_head=True, projector=True, vit_from_layer=1)
    with caplog.at_level(logging.INFO, logger="share4v"):
        summary = apply_trainable(model, plan)
    tower = "model.vision_tower.vision_tower."
    names = trainable_names(model)
    expected_vit = {
        f"{tower}{n}"
        for n, _ in model.get_vision_tower().vision_tower.named_parameters()
        if n.startswith("encoder.layers.1.")  # layer 2, the last, feeds nothing at mm_vision_select_layer -2
    }
    assert {n for n in names if n.startswith(tower)} == expected_vit
    everything_else = {n for n, _ in model.named_parameters() if not n.startswith(tower)}
    assert everything_else <= names
    assert summary["vision_tower"][0] == sum(p.numel() for p in vit_encoder_layers(model)[1].parameters())
    assert "[TRAINABLE] vision_tower" in caplog.text and "encoder layers 1-1 (the rest feed nothing)" in caplog.text


@pytest.mark.parametrize("from_layer", [-1, 0, 1])
def test_every_trainable_parameter_gets_a_gradient(model, from_layer):
    """A trainable parameter that no gradient reaches breaks DDP with checkpointing and FSDP's resume."""
    apply_trainable(model, plan_from_args(model_args(tune_entire_model=True, tune_vit_from_layer=from_layer),
                                          training_args()))  # fmt: skip
    size = model.get_vision_tower().config.image_size
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 7, 9, 11]])
    labels = torch.tensor([[-100, -100, IMAGE_TOKEN_INDEX, 7, 9, 11]])
    model(ids, images=torch.randn(1, 3, size, size), labels=labels).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".vision_tower." in n for n in trainable)
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable


def test_stage_2_freezes_the_whole_vit(model):
    apply_trainable(model, plan_from_args(model_args(), training_args()))
    names = trainable_names(model)
    assert not any(".vision_tower." in n for n in names)
    assert {n for n, _ in model.named_parameters() if ".vision_tower." not in n} == names


def test_projector_alignment_trains_the_projector_only(model):
    apply_trainable(model, plan_from_args(model_args(tune_mm_mlp_adapter=True), training_args()))
    assert trainable_names(model) == {n for n, _ in model.named_parameters() if ".mm_projector." in n}


def test_whole_vit_and_freezes(model):
    apply_trainable(model, plan_from_args(model_args(tune_vision_tower=True, freeze_backbone=True), training_args()))
    names = trainable_names(model)
    tower = "model.vision_tower.vision_tower."
    frozen = {n for n, _ in model.named_parameters() if n.startswith(tower) and n not in names}
    # mm_vision_select_layer -2 of 3 layers: the last layer and post_layernorm feed nothing
    assert frozen == {n for n, _ in model.named_parameters()
                      if n.startswith((f"{tower}encoder.layers.2.", f"{tower}post_layernorm."))}  # fmt: skip
    assert frozen and f"{tower}embeddings.patch_embedding.weight" in names
    assert "lm_head.weight" in names and "model.embed_tokens.weight" not in names  # freeze_backbone: body only
    apply_trainable(model, plan_from_args(model_args(), training_args(freeze_mm_mlp_adapter=True)))
    assert not any(".mm_projector." in n for n in trainable_names(model))


@pytest.mark.parametrize(
    ("select_layer", "unused_layers"), [(-1, []), (-2, [2]), (-4, [0, 1, 2]), (1, [1, 2]), (3, [])]
)
def test_unused_modules_are_the_layers_after_the_selected_feature(model, select_layer, unused_layers):
    tower = model.get_vision_tower()
    tower.select_layer = select_layer
    layers = tower.vision_tower.encoder.layers
    assert tower.unused_modules() == [*(layers[i] for i in unused_layers), tower.vision_tower.post_layernorm]


@pytest.mark.parametrize("select_layer", [-5, 4])
def test_unused_modules_refuse_a_feature_layer_the_tower_lacks(model, select_layer):
    model.get_vision_tower().select_layer = select_layer
    with pytest.raises(ValueError, match=f"mm_vision_select_layer {select_layer} is outside the 3-layer"):
        model.get_vision_tower().unused_modules()


def test_vit_layer_past_the_selected_feature_is_refused(model):
    with pytest.raises(ValueError, match="^--tune_vit_from_layer 2: at mm_vision_select_layer -2 the feature comes "
                                         "out of encoder layer 1, so no later layer can learn$"):  # fmt: skip
        apply_trainable(model, plan_from_args(model_args(tune_entire_model=True, tune_vit_from_layer=2),
                                              training_args()))  # fmt: skip


def test_vit_layer_out_of_range(model):
    with pytest.raises(ValueError, match="the ViT has 3 layers"):
        apply_trainable(
            model, plan_from_args(model_args(tune_entire_model=True, tune_vit_from_layer=3), training_args())
        )


@pytest.mark.parametrize(("projector_lr", "tower_lr"), [(1e-3, None), (None, 5e-4), (1e-3, 5e-4)])
def test_projector_and_vit_learning_rates_are_independent(model, projector_lr, tower_lr):
    apply_trainable(model, plan_from_args(model_args(tune_entire_model=True, tune_vit_from_layer=0), training_args()))
    decay = [n for n, _ in model.named_parameters() if not n.endswith("bias") and "norm" not in n]
    groups = param_groups(model, decay, 0.1, mm_projector_lr=projector_lr, vision_tower_lr=tower_lr)
    lr_of = {id(p): group.get("lr") for group in groups for p in group["params"]}
    projector = model.get_model().mm_projector.parameters()
    tower = [p for p in model.get_vision_tower().parameters() if p.requires_grad]
    assert {lr_of[id(p)] for p in projector} == {projector_lr}
    assert {lr_of[id(p)] for p in tower} == {tower_lr}
    assert lr_of[id(model.lm_head.weight)] is None  # the run's learning rate
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    bias = model.get_model().mm_projector[0].bias
    assert next(g for g in groups if any(p is bias for p in g["params"]))["weight_decay"] == 0.0
