"""train/share4v_trainer.py

`Share4VTrainer`: transformers' Trainer with what ShareGPT4V's recipe needs on top — the modality/length-grouped
sampler, optimizer groups with their own learning rates for projector and ViT, checkpoints (periodic and final)
in the released layouts, restored completely on resume, packed micro-batches (`--pack_sequences`), activation
checkpointing in only the first decoder layers (`--gradient_checkpointing_layers`), and useful tokens/s and MFU in
every log line.
"""

from __future__ import annotations

import os

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from share4v.train.model_setup import apply_checkpointing
from share4v.train.optim import param_groups
from share4v.train.sampler import ModalityLengthGroupedSampler
from share4v.train.saving import is_peft_model, load_training_checkpoint, save_training_checkpoint, vit_was_trained
from share4v.train.throughput import ThroughputMeter, measure_matmul_peak, sample_lengths

TRAINING_ARGS_NAME = "training_args.bin"


class SelectiveCheckpointing(TrainerCallback):
    """Applies --gradient_checkpointing_layers (and drops the input-gradient hooks that the non-reentrant checkpoint
    does not need: `apply_checkpointing`) when training starts. It cannot be applied earlier: `Trainer.train` turns
    checkpointing on in every layer (`model.gradient_checkpointing_enable`, transformers 5.17;
    `activation_checkpointing_enable`, 5.24) before it enters `_inner_training_loop`, which fires `on_train_begin`;
    the layers read their flag at every call, so what is set here holds for every step, under DeepSpeed too."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args.gradient_checkpointing:
            apply_checkpointing(model, args)


class Share4VTrainer(Trainer):
    _throughput: ThroughputMeter | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(SelectiveCheckpointing)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self._count_tokens(inputs)
            if getattr(self.args, "pack_sequences", False):
                inputs = {**inputs, "pack_sequences": True}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _count_tokens(self, inputs) -> None:
        if self._throughput is None:
            peak = self.args.peak_tflops * 1e12 if getattr(self.args, "peak_tflops", None) else None
            if peak is None and self.args.device.type == "cuda":
                peak = measure_matmul_peak(self.args.device)
            self._throughput = ThroughputMeter(self.accelerator.unwrap_model(self.model).config, peak)
        patches = getattr(self.data_collator, "image_tokens_per_image", None) or 1
        self._throughput.add(sample_lengths(inputs["input_ids"], inputs["attention_mask"], patches))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._throughput is not None:
            logs.update(self._throughput.rates())  # useful tokens/s (this process) and MFU since the last log
        super().log(logs, start_time)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if getattr(self.args, "group_by_modality_length", False) and dataset is not None:
            return ModalityLengthGroupedSampler(
                batch_size=self.args.train_batch_size,
                world_size=self.args.world_size * self.args.gradient_accumulation_steps,
                lengths=dataset.modality_lengths,
                seed=self.args.seed,
            )
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            # transformers' sampler, with the lengths the dataset knows (it would otherwise build every sample)
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedSampler(batch, lengths=dataset.lengths)
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        groups = param_groups(
            opt_model,
            self.get_decay_parameter_names(opt_model),
            self.args.weight_decay,
            mm_projector_lr=getattr(self.args, "mm_projector_lr", None),
            vision_tower_lr=getattr(self.args, "vision_tower_lr", None),
        )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _wants_tower_folder(self) -> bool:
        wanted = getattr(self.args, "save_vision_tower", None)
        return vit_was_trained(self.model) if wanted is None else wanted

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # For peft models under ZeRO-3, transformers gathers only the trainable weights; a vision_tower/ folder
        # needs the frozen tower weights too, so gather everything (every rank takes part) in that case.
        zero3 = self.is_deepspeed_enabled and self.deepspeed.config.get("zero_optimization", {}).get("stage") == 3
        if zero3 and is_peft_model(self.model) and self._wants_tower_folder():
            state_dict = self.accelerator.get_state_dict(self.deepspeed)
            self._save(output_dir if output_dir is not None else self.args.output_dir, state_dict=state_dict)
            return
        super().save_model(output_dir, _internal_call)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        save_training_checkpoint(self.model, output_dir, state_dict, getattr(self.args, "save_vision_tower", None))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_training_checkpoint(self.model if model is None else model, resume_from_checkpoint)
