"""train/train.py

ShareGPT4V training, both stages, with the original's flags (see scripts/sharegpt4v/*.sh and docs/Training.md).

    # stage 1 (one node; the SLURM scripts launch the same entry on 2 x 8 GPUs)
    torchrun --nproc_per_node 8 share4v/train/train_mem.py --deepspeed scripts/zero3.json \\
        --model_name_or_path lmsys/vicuna-7b-v1.5 --version plain --data_path captions.json --image_folder data \\
        --vision_tower openai/clip-vit-large-patch14-336 --pretrain_mm_mlp_adapter mm_projector.bin \\
        --mm_projector_type mlp2x_gelu --tune_entire_model True --tune_vit_from_layer 12 \\
        --mm_vision_select_layer -2 --bf16 True --output_dir checkpoints/stage1 ...
    # on the CPU, a tiny run:
    python -m share4v.train.train --model_name_or_path checkpoints/share4v-tiny --version v1 \\
        --data_path data.json --image_folder images --output_dir out --use_cpu True --max_steps 10

The driver reads as the recipe: arguments → seed (`--seed`) → model → tokenizer → vision tower → LoRA → trainable
set → data → Trainer (resuming from the last checkpoint) → save in the released layout → report skipped samples.
`build_trainer` stops before training (benchmarks and tools use it).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from transformers.trainer_utils import enable_full_determinism, set_seed

from share4v.train.arguments import DataArguments, ModelArguments, TrainingArguments, parse_arguments
from share4v.train.data import DataCollatorForSupervisedDataset, LazySupervisedDataset, make_supervised_data_module
from share4v.train.fsdp import use_fp32_gradients
from share4v.train.model_setup import apply_lora, configure_step_speedups, load_model, load_tokenizer, setup_vision
from share4v.train.preprocess import conv_mode_for_version, preprocess, preprocess_multimodal
from share4v.train.share4v_trainer import Share4VTrainer
from share4v.train.trainable import apply_trainable, plan_from_args

logger = logging.getLogger("share4v.train")


def _configure_logging(training_args: TrainingArguments) -> None:
    """share4v's own progress at INFO on the main process (WARNING elsewhere) unless --log_level says otherwise."""
    level = training_args.get_process_log_level()
    if training_args.log_level == "passive":
        level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("share4v").setLevel(level)


def _resume_point(training_args: TrainingArguments) -> str | bool | None:
    """`--resume_from_checkpoint`, else True when the output folder holds a checkpoint (as the original)."""
    if training_args.resume_from_checkpoint:
        return training_args.resume_from_checkpoint
    if any(Path(training_args.output_dir).glob("checkpoint-*")):
        return True
    return None


def _seed(training_args: TrainingArguments) -> None:
    if training_args.full_determinism:
        enable_full_determinism(training_args.seed)
    else:
        set_seed(training_args.seed)


def _start_deepspeed_on_cpu(training_args: TrainingArguments) -> None:
    """DeepSpeed over several CPU processes (`--use_cpu`, gloo): transformers starts DeepSpeed's communication only
    on accelerators, and ZeRO-3's partitioned loading would otherwise count one process where torch has several."""
    if not (training_args.deepspeed and training_args.use_cpu):
        return
    import torch.distributed

    if torch.distributed.is_initialized():
        import deepspeed

        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())


def build_trainer(
    attn_implementation: str | None = None, argv: list[str] | None = None, callbacks: list | None = None
) -> Share4VTrainer:
    """Everything up to the first step: arguments → seed → model → tokenizer → vision → LoRA → trainable set →
    data."""
    model_args, data_args, training_args = parse_arguments(argv)
    _configure_logging(training_args)
    if training_args.n_gpu > 1:  # one process seeing several GPUs: the Trainer would wrap the model in DataParallel
        raise ValueError(
            f"this process sees {training_args.n_gpu} GPUs and was not launched distributed: start it with torchrun "
            f"--nproc_per_node {training_args.n_gpu} (or deepspeed), or make one GPU visible (CUDA_VISIBLE_DEVICES=0)"
        )
    data_args.conv_mode = conv_mode_for_version(model_args.version)
    _start_deepspeed_on_cpu(training_args)
    # `--seed` decides the weights made new here (LoRA adapters, a projector trained from scratch), whatever ran in
    # this process before and however much randomness loading drew (DeepSpeed ZeRO-3's partitioned loading draws
    # other amounts than a plain one); the Trainer seeds again for the training itself
    _seed(training_args)
    model = load_model(model_args, training_args, attn_implementation)
    _seed(training_args)
    tokenizer = load_tokenizer(model_args, training_args, model)
    setup_vision(model, tokenizer, model_args, data_args, training_args)
    if training_args.lora_enable:
        model = apply_lora(model, training_args)
    apply_trainable(model, plan_from_args(model_args, training_args))
    configure_step_speedups(model, training_args)
    use_fp32_gradients(training_args)  # FSDP2 runs only

    resuming = _resume_point(training_args) is not None
    data_module = make_supervised_data_module(tokenizer, data_args, training_args, resuming=resuming)
    return Share4VTrainer(
        model=model, processing_class=tokenizer, args=training_args, callbacks=callbacks, **data_module
    )


def train(
    attn_implementation: str | None = None, argv: list[str] | None = None, callbacks: list | None = None
) -> Share4VTrainer:
    """Run one training stage from the command line `argv` (default `sys.argv[1:]`); returns the trainer.

    `callbacks` are extra `transformers.TrainerCallback`s (progress hooks, early stops, tests).
    """
    trainer = build_trainer(attn_implementation, argv, callbacks)
    trainer.train(resume_from_checkpoint=_resume_point(trainer.args))
    trainer.save_state()

    trainer.model.config.use_cache = True
    trainer.save_model(trainer.args.output_dir)
    _report_skipped(trainer.train_dataset, trainer.args)
    return trainer


def _report_skipped(dataset: LazySupervisedDataset, training_args: TrainingArguments) -> None:
    if not training_args.should_save:
        return
    skipped = dataset.report.entries()
    if skipped:
        logger.warning(
            "%d samples were skipped (bad rows, missing/corrupt images, answers not found or truncated away); "
            "they are listed in %s",
            len(skipped),
            dataset.report.path,
        )


__all__ = [
    "DataArguments",
    "DataCollatorForSupervisedDataset",
    "LazySupervisedDataset",
    "ModelArguments",
    "TrainingArguments",
    "make_supervised_data_module",
    "preprocess",
    "preprocess_multimodal",
    "train",
]


def main(attn_implementation: str | None = None) -> None:
    """The command line: a bad setting, path or file is one line and exit status 1, not a traceback. A finished run
    leaves its process group before the interpreter exits (torchrun runs otherwise tear the communicator down in the
    exit handlers, which at times aborts a run that finished into exit status -6)."""
    try:
        trainer = train(attn_implementation)
    except (ValueError, OSError, ImportError) as err:
        sys.exit(f"error: {error_message(err)}")
    trainer.accelerator.end_training()


def error_message(err: BaseException) -> str:
    """`err`'s message; for one a DataLoader worker raised (e.g. a bad sample under `--strict_data`), the worker's
    own message: torch raises it again in the main process with the worker's whole traceback as its message."""
    text = str(err).rstrip()
    if "\nOriginal Traceback" not in text:
        return text
    module = type(err).__module__
    name = type(err).__qualname__ if module == "builtins" else f"{module}.{type(err).__qualname__}"
    return text.rpartition(f"\n{name}: ")[2].strip() if f"\n{name}: " in text else text.splitlines()[-1].strip()


if __name__ == "__main__":
    main()
