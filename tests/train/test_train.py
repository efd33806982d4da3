"""The recipe end to end through the entry the scripts call: projector alignment → stage 1 → stage 2 (CPU)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from share4v.mm_utils import process_images, tokenizer_image_token
from share4v.model.builder import load_pretrained_model
from share4v.train.train import TrainingArguments, build_trainer, train
from tests.helpers import random_image

COMMON = [
    "--use_cpu", "True", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
    "--per_device_train_batch_size", "4", "--learning_rate", "2e-3", "--model_max_length", "256",
    "--dataloader_num_workers", "0", "--seed", "0", "--mm_projector_type", "mlp2x_gelu",
    "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
]  # fmt: skip


def losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def clearly_lower(values):
    first, last = sum(values[:3]) / 3, sum(values[-3:]) / 3
    return last < 0.6 * first


def eval_logits(model, tokenizer, image_processor, prompt="USER: <image>\nWhat shape is shown? ASSISTANT: A"):
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None]
    pixels = process_images([random_image(3, (60, 50))], image_processor, image_aspect_ratio="pad")
    model.eval()
    with torch.no_grad():
        return model(ids, images=pixels).logits


@pytest.fixture(scope="module")
def recipe(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    align = train(argv=[
        *COMMON, "--model_name_or_path", str(world["llm"]), "--version", "plain",
        "--data_path", str(world["captions"]), "--image_folder", str(world["captions"].parent),
        "--vision_tower", str(world["tower"]), "--tune_mm_mlp_adapter", "True", "--max_steps", "8",
        "--output_dir", str(root / "align"),
    ])  # fmt: skip
    stage1 = train(argv=[
        *COMMON, "--model_name_or_path", str(world["llm"]), "--version", "plain",
        "--data_path", str(world["captions"]), "--image_folder", str(world["captions"].parent),
        "--vision_tower", str(world["tower"]),
        "--pretrain_mm_mlp_adapter", str(root / "align" / "mm_projector.safetensors"),
        "--tune_entire_model", "True", "--tune_vit_from_layer", "1", "--max_steps", "24",
        "--output_dir", str(root / "stage1"),
    ])  # fmt: skip
    stage1_logits = eval_logits(stage1.model, stage1.processing_class, stage1.model.get_vision_tower().image_processor)
    shutil.move(root / "stage1", root / "moved" / "stage1")  # the checkpoint must not depend on where it was written
    stage1_dir = root / "moved" / "stage1"
    stage2 = train(argv=[
        *COMMON, "--model_name_or_path", str(stage1_dir), "--version", "v1",
        "--data_path", str(world["instruct"]), "--image_folder", str(world["instruct"].parent),
        "--vision_tower", str(stage1_dir / "vision_tower"), "--image_aspect_ratio", "pad",
        "--group_by_modality_length", "True", "--max_steps", "24", "--output_dir", str(root / "stage2"),
    ])  # fmt: skip
    return {
        "root": root, "align": align, "stage1": stage1, "stage1_dir": stage1_dir, "stage1_logits": stage1_logits,
        "stage2": stage2,
    }  # fmt: skip


def test_each_stage_lowers_the_loss(recipe):
    for stage in ("stage1", "stage2"):
        assert clearly_lower(losses(recipe[stage])), (stage, losses(recipe[stage]))
    assert losses(recipe["align"])[-1] < losses(recipe["align"])[0]


def test_alignment_writes_only_the_projector(recipe, world):
    folder = recipe["root"] / "align"
    assert (folder / "mm_projector.safetensors").is_file() and not (folder / "model.safetensors").exists()
    assert set(load_file(folder / "mm_projector.safetensors")) == {
        f"model.mm_projector.{i}.{kind}" for i in (0, 2) for kind in ("weight", "bias")
    }
    trainer = recipe["align"]
    tokenizer, model, processor, _ = load_pretrained_model(str(folder), str(world["llm"]), None, device="cpu")
    expected = eval_logits(trainer.model, tokenizer, processor)
    assert torch.allclose(eval_logits(model, tokenizer, processor), expected, atol=1e-5)


def test_stage_1_trainable_set_is_the_recipe(recipe):
    model = recipe["stage1"].model
    tower = model.get_vision_tower().vision_tower
    for index, layer in enumerate(tower.encoder.layers):
        # layer 2, the last, feeds nothing at mm_vision_select_layer -2: it stays frozen
        assert all(p.requires_grad == (index == 1) for p in layer.parameters())
    frozen_vit = [tower.embeddings, tower.pre_layrnorm, tower.post_layernorm]
    assert not any(p.requires_grad for part in frozen_vit for p in part.parameters())
    others = [p for n, p in model.named_parameters() if ".vision_tower." not in n]
    assert all(p.requires_grad for p in others)


def test_stage_1_trains_only_the_later_vit_layers(recipe, world):
    original = {k.removeprefix("vision_model."): v for k, v in load_file(world["tower"] / "model.safetensors").items()}
    trained = load_file(recipe["stage1_dir"] / "vision_tower" / "model.safetensors")
    trained = {k.removeprefix("vision_model."): v for k, v in trained.items()}
    assert set(trained) == set(original)
    changed = {k for k in original if not torch.equal(original[k], trained[k])}
    # Layers >= 1 are trainable; layer 2 (the last) feeds nothing at mm_vision_select_layer -2, so only layer 1 moves.
    assert changed and all(k.startswith("encoder.layers.1.") for k in changed)


def test_moved_stage_1_output_loads_with_identical_logits(recipe):
    folder = recipe["stage1_dir"]
    assert not any("vision_tower" in k for k in load_file(folder / "model.safetensors"))
    tokenizer, model, processor, _ = load_pretrained_model(str(folder), None, None, device="cpu")
    assert model.config.mm_vision_tower == "vision_tower"
    assert torch.allclose(eval_logits(model, tokenizer, processor), recipe["stage1_logits"], atol=1e-5)


def test_stage_2_freezes_the_vit_and_loads(recipe):
    trainer = recipe["stage2"]
    model = trainer.model
    assert not any(p.requires_grad for p in model.get_vision_tower().parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if ".vision_tower." not in n)
    stage1_tower = load_file(recipe["stage1_dir"] / "vision_tower" / "model.safetensors")
    for name, param in model.get_vision_tower().vision_tower.named_parameters():
        assert torch.equal(param, stage1_tower["vision_model." + name])
    folder = recipe["root"] / "stage2"
    assert not (folder / "vision_tower").exists()  # nothing of the ViT was trained
    tokenizer, loaded, processor, _ = load_pretrained_model(str(folder), None, None, device="cpu")
    assert loaded.config.image_aspect_ratio == "pad" and loaded.config.use_cache
    expected = eval_logits(model, trainer.processing_class, processor)
    assert torch.allclose(eval_logits(loaded, tokenizer, processor), expected, atol=1e-5)


def test_text_only_run_from_a_plain_llm(world, tmp_path):
    """No vision tower anywhere: a language-model fine-tune through the same entry, loadable as a text model."""
    rows = [{"id": str(i), "conversations": [{"from": "human", "value": f"Count to {i % 4 + 2}."},
                                             {"from": "gpt", "value": " ".join(map(str, range(1, i % 4 + 3)))}]}
            for i in range(16)]  # fmt: skip
    data = tmp_path / "text.json"
    data.write_text(json.dumps(rows))
    trainer = train(argv=[
        "--model_name_or_path", str(world["llm"]), "--version", "v1", "--data_path", str(data), "--use_cpu", "True",
        "--max_steps", "16", "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--logging_steps", "1",
        "--save_strategy", "no", "--report_to", "none", "--output_dir", str(tmp_path / "out"),
    ])  # fmt: skip
    assert clearly_lower(losses(trainer))
    _, model, image_processor, _ = load_pretrained_model(str(tmp_path / "out"), None, None, device="cpu")
    assert image_processor is None and model.get_vision_tower() is None


def test_a_text_only_model_refuses_rows_with_images_at_start_up(world, tmp_path):
    """Without a vision tower the images would be dropped and their `<image>` markers trained as text (as the
    original did): one line naming the file, the count and the first such row, before any training."""
    data = world["instruct"]
    argv = [*COMMON, "--model_name_or_path", str(world["llm"]), "--version", "v1", "--data_path", str(data),
            "--image_folder", str(data.parent), "--output_dir", str(tmp_path)]  # fmt: skip
    with pytest.raises(ValueError) as err:
        build_trainer(argv=argv)
    assert str(err.value) == (
        f"{data}: 24 of 27 rows have images (the first: {data}[0], id instruct-0) but the "
        "model has no vision tower: pass --vision_tower, or leave those rows out of the data"
    )


def test_continuing_a_checkpoint_keeps_its_vision_settings(recipe, tmp_path, world):
    """Flags left out mean the checkpoint's values (projector type, select layer, aspect ratio, image tokens)."""
    trainer = train(argv=[
        "--model_name_or_path", str(recipe["root"] / "stage2"), "--version", "v1",
        "--data_path", str(world["instruct"]), "--image_folder", str(world["instruct"].parent), "--use_cpu", "True",
        "--max_steps", "2", "--save_strategy", "no", "--report_to", "none", "--output_dir", str(tmp_path / "out"),
    ])  # fmt: skip
    config = trainer.model.config
    assert (config.mm_projector_type, config.mm_vision_select_layer, config.image_aspect_ratio) == (
        "mlp2x_gelu", -2, "pad"
    )  # fmt: skip
    assert not config.mm_use_im_patch_token and config.vocab_size == 512
    assert trainer.model.get_vision_tower().select_layer == -2
    with pytest.raises(ValueError, match="--mm_projector_type linear but .* holds a mlp2x_gelu projector"):
        train(argv=[
            "--model_name_or_path", str(recipe["root"] / "stage2"), "--version", "v1", "--mm_projector_type", "linear",
            "--data_path", str(world["instruct"]), "--use_cpu", "True", "--output_dir", str(tmp_path / "bad"),
        ])  # fmt: skip


def test_one_process_over_several_gpus_is_refused_before_the_model_loads(world, tmp_path, monkeypatch):
    # transformers would wrap the model in DataParallel, whose replicas break the vision tower; a CPU machine has no
    # GPUs, so the arguments say two
    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: 2))
    argv = [*COMMON, "--model_name_or_path", str(world["llm"]), "--version", "v1", "--data_path",
            str(world["instruct"]), "--output_dir", str(tmp_path)]  # fmt: skip
    with pytest.raises(ValueError, match="^this process sees 2 GPUs and was not launched distributed: start it with "
                                         "torchrun --nproc_per_node 2"):  # fmt: skip
        build_trainer(argv=argv)
