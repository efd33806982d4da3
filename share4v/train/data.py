"""train/data.py

The training data pipeline: `LazySupervisedDataset` (rows → images + input_ids + labels, one sample at a time),
`DataCollatorForSupervisedDataset` (right-padded batches) and `make_supervised_data_module`.

Every sample's length as the language model sees it (text tokens + images × image tokens) is known before the
model runs: truncation to `model_max_length` cuts text only, never an image, and length grouping is exact. A sample
that cannot be used (bad row, missing or corrupt image, answer not found or truncated away) is reported with its
place and id and replaced by the next good one; `--strict_data` makes it fatal instead.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from share4v.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from share4v.mm_utils import ImageLoadError, load_image, names_a_file, process_images
from share4v.train.lengths import dataset_lengths
from share4v.train.preprocess import SampleError, preprocess, preprocess_multimodal
from share4v.train.rows import BadRow, SkipReport, check_image_markers, check_row, image_paths, read_rows, sample_id
from share4v.utils import dist_info

logger = logging.getLogger(__name__)

SKIPPED_SAMPLES_FILE = "skipped_samples.jsonl"
IMAGE_PROBES = 64  # image rows looked up at start-up, spread over the file


def check_image_folder(
    data_path: str, rows: Sequence[dict], image_folder: str | None, flag: str = "--image_folder"
) -> None:
    """Fail fast when the images cannot be where `--image_folder` says (before hours of text-only training).

    Looks up the images of up to `IMAGE_PROBES` image rows spread evenly over the file; a single missing image is
    left to the per-sample skipping, but none found means a wrong folder. `flag` is the option the messages name
    (the data checker's is `--image-folder`).

    Raises:
        FileNotFoundError: when `image_folder` is not a folder, or none of the probed images exists under it.
    """
    files = [[path for path in image_paths(row) if names_a_file(path)] for row in rows]  # not URLs, data: URIs
    files = [paths for paths in files if paths]
    if not files:
        return
    folder = image_folder or ""
    picks = sorted({round(i * (len(files) - 1) / max(1, IMAGE_PROBES - 1)) for i in range(IMAGE_PROBES)})
    picked = [path for index in picks for path in files[index]]
    if folder and not os.path.isdir(folder) and not all(os.path.isabs(path) for path in picked):
        raise FileNotFoundError(f"{flag} {folder} is not a folder ({data_path} has {len(files)} image rows)")
    probed = [os.path.join(folder, path) for path in picked]  # an absolute path stays itself
    missing = [path for path in probed if not os.path.isfile(path)]
    if len(missing) == len(probed):
        raise FileNotFoundError(
            f"{data_path}: none of {len(probed)} sampled images exists under {flag} "
            f"{folder or '(not given: the current folder)'}, e.g. {missing[0]}"
        )
    if missing and dist_info().rank == 0:  # every rank probes alike
        logger.warning(
            "%d of %d sampled images are missing under %s %s (e.g. %s); their samples will be skipped",
            len(missing), len(probed), flag, folder, missing[0],
        )  # fmt: skip


def check_no_image_rows(data_path: str, rows: Sequence[dict], where: Sequence[str]) -> None:
    """Fail fast when a model without a vision tower is given rows with images: it would never see them, and would
    learn their `<image>` markers as plain text (as the original did).

    Raises:
        ValueError: naming the file, how many rows have images and the first of them.
    """
    with_images = [index for index, row in enumerate(rows) if image_paths(row)]
    if not with_images:
        return
    first = with_images[0]
    named = f", id {sample_id(rows[first])}" if sample_id(rows[first]) is not None else ""
    raise ValueError(
        f"{data_path}: {len(with_images)} of {len(rows)} rows have images (the first: {where[first]}{named}) but the "
        "model has no vision tower: pass --vision_tower, or leave those rows out of the data"
    )


def merged_length(input_ids: Sequence[int], image_tokens: int | None) -> int:
    """Length once each `IMAGE_TOKEN_INDEX` becomes `image_tokens` positions (1 when unknown)."""
    images = sum(1 for token in input_ids if token == IMAGE_TOKEN_INDEX)
    return len(input_ids) + images * ((image_tokens or 1) - 1)


def truncate_to_budget(
    input_ids: list[int], labels: list[int], max_length: int, image_tokens: int | None
) -> tuple[list[int], list[int], int]:
    """The longest prefix whose merged length fits `max_length`; an image that does not fit whole is dropped.

    Returns:
        `(input_ids, labels, images_kept)`.
    """
    cost = image_tokens or 1
    used = kept = images = 0
    for token in input_ids:
        step = cost if token == IMAGE_TOKEN_INDEX else 1
        if used + step > max_length:
            break
        used += step
        kept += 1
        images += token == IMAGE_TOKEN_INDEX
    return input_ids[:kept], labels[:kept], images


def sample_turns(row: dict, has_image: bool, data_args: Any) -> list[dict]:
    """A copy of the row's turns with `<image>` markers normalised (`preprocess_multimodal`).

    A row with images but no marker gets them in front of its first human turn; any other mismatch between
    markers and images (markers in a row without images included) is a `SampleError` (`check_image_markers`).
    """
    turns = copy.deepcopy(row["conversations"])
    markers = check_image_markers(row)
    if not has_image:
        return turns
    if markers == 0:
        first_human = next((i for i, t in enumerate(turns) if str(t.get("from")).lower() in ("human", "user")), 0)
        turns[first_human]["value"] = DEFAULT_IMAGE_TOKEN * len(image_paths(row)) + "\n" + turns[first_human]["value"]
    preprocess_multimodal([turns], data_args)
    return turns


PROGRESS_FROM_ROWS = 10_000  # from this many rows a progress bar shows while they are checked (the 665K mix: ~7 s)


class LazySupervisedDataset(Dataset):
    """LLaVA-format conversations with images, tokenized for supervised training when a sample is asked for."""

    def __init__(self, data_path: str, tokenizer: Any, data_args: Any, skipped_path: str | None = None):
        super().__init__()
        self.tokenizer = tokenizer
        self.data_args = data_args
        self.conv_mode = data_args.conv_mode
        self.report = SkipReport(skipped_path)
        self.data_path = data_path
        rows, bad = read_rows(data_path)
        self.list_data_dict, self.where = [], []
        quiet = dist_info().rank != 0 or len(rows) < PROGRESS_FROM_ROWS
        for where, row in tqdm(rows, desc=f"checking {os.path.basename(data_path)}", unit=" rows", disable=quiet):
            try:
                check_row(row, self.conv_mode)
            except SampleError as err:
                bad.append(BadRow(where, sample_id(row), str(err)))
                continue
            self.list_data_dict.append(row)
            self.where.append(where)
        for problem in bad:
            if data_args.strict_data:
                raise SampleError(f"bad training sample {problem} (--strict_data)")
            self.report.skip(problem, announce=dist_info().rank == 0)  # every rank finds these
        if not self.list_data_dict:
            raise ValueError(f"{data_path}: no usable training samples ({len(bad)} bad rows)")
        if data_args.is_multimodal:
            check_image_folder(data_path, self.list_data_dict, data_args.image_folder)
        else:
            check_no_image_rows(data_path, self.list_data_dict, self.where)
        logger.info("%s: %d samples (%d bad rows left out)", data_path, len(self.list_data_dict), len(bad))
        self._lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.list_data_dict)

    @property
    def model_max_length(self) -> int:
        return self.tokenizer.model_max_length

    # ---- lengths -------------------------------------------------------------------------------------------

    @property
    def lengths(self) -> list[int]:
        """Merged length of each sample (text + images × image tokens), capped at `model_max_length`."""
        return [abs(length) for length in self.modality_lengths]

    @property
    def modality_lengths(self) -> list[int]:
        """As `lengths`, positive for samples with images and negative for text-only ones."""
        if self._lengths is None:
            self._lengths = dataset_lengths(self)
        return self._lengths.tolist()

    # ---- samples -------------------------------------------------------------------------------------------

    def sample_turns(self, row: dict, has_image: bool) -> list[dict]:
        return sample_turns(row, has_image, self.data_args)

    def _load_images(self, row: dict) -> list[torch.Tensor]:
        folder = self.data_args.image_folder or ""
        images = [load_image(os.path.join(folder, path)) for path in image_paths(row)]
        pixels = process_images(
            images, self.data_args.image_processor, image_aspect_ratio=self.data_args.image_aspect_ratio
        )
        return list(pixels)

    def _blank_image(self) -> torch.Tensor:
        size = self.data_args.image_processor.crop_size
        return torch.zeros(3, size["height"], size["width"])

    def _build(self, index: int) -> dict[str, Any]:
        row = self.list_data_dict[index]
        has_image = bool(image_paths(row)) and self.data_args.is_multimodal
        images = self._load_images(row) if has_image else []
        data = preprocess(
            [self.sample_turns(row, has_image)], self.tokenizer, has_image=has_image, conv_mode=self.conv_mode
        )
        input_ids, labels = data["input_ids"][0].tolist(), data["labels"][0].tolist()
        full_length = merged_length(input_ids, self.data_args.image_tokens_per_image)
        input_ids, labels, kept = truncate_to_budget(
            input_ids, labels, self.model_max_length, self.data_args.image_tokens_per_image
        )
        if all(label == IGNORE_INDEX for label in labels):
            raise SampleError(
                f"every answer was truncated away (length {full_length} > model_max_length {self.model_max_length})"
            )
        images = images[:kept]
        if self.data_args.is_multimodal and not images:
            images = [self._blank_image()]  # text-only sample in a multimodal model: a blank image, as the original
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "images": images,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(len(self)):
            current = (index + attempt) % len(self)
            try:
                return self._build(current)
            except (SampleError, ImageLoadError) as err:
                bad = BadRow(self.where[current], sample_id(self.list_data_dict[current]), str(err))
                if self.data_args.strict_data:
                    raise SampleError(f"bad training sample {bad} (--strict_data)") from None
                self.report.skip(bad)
        raise SampleError(f"{self.data_path}: none of the {len(self)} samples could be used (each was skipped)")


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads `input_ids` (pad = the tokenizer's pad id) and `labels` (IGNORE_INDEX) into a batch.

    Images: one per row (a blank standing for a text-only row) as the original when no row has more than one,
    else all rows' images in placeholder order. A sample longer than `model_max_length` (merged length) is cut
    as the dataset does; samples from `LazySupervisedDataset` already fit.
    """

    tokenizer: Any
    image_tokens_per_image: int | None = None

    def __call__(self, instances: Sequence[dict[str, Any]]) -> dict[str, Any]:
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        rows = []
        for instance in instances:
            ids, labels = instance["input_ids"].tolist(), instance["labels"].tolist()
            ids, labels, kept = truncate_to_budget(
                ids, labels, self.tokenizer.model_max_length, self.image_tokens_per_image
            )
            rows.append((ids, labels, kept))
        length = max(len(ids) for ids, _, _ in rows)
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for row, (ids, row_labels, _) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            labels[row, : len(ids)] = torch.tensor(row_labels, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        if any(instance.get("images") for instance in instances) or "image" in instances[0]:
            batch["images"] = self._images(instances, rows)  # a text-only model's samples carry no images
        return batch

    @staticmethod
    def _images(instances, rows) -> torch.Tensor | list[torch.Tensor]:
        per_row = [list(inst["images"]) if "images" in inst else [inst["image"]] for inst in instances]
        if all(len(images) == 1 for images in per_row):
            images = [images[0] for images in per_row]  # one per row; rows without a placeholder hold a blank
        else:
            images = [image for images, (_, _, kept) in zip(per_row, rows, strict=True) for image in images[:kept]]
        if images and all(image.shape == images[0].shape for image in images):
            return torch.stack(images)
        return images


def make_supervised_data_module(
    tokenizer: Any, data_args: Any, training_args: Any = None, resuming: bool = False
) -> dict[str, Any]:
    """`dict(train_dataset=..., eval_dataset=None, data_collator=...)` for the Trainer.

    With `training_args`, skipped samples are also listed in `<output_dir>/skipped_samples.jsonl` (started afresh
    unless `resuming`, which adds to the interrupted run's list), and sample
    lengths for `group_by_modality_length` or `--train_sampling_strategy group_by_length` are measured (or read
    from their cache) before training starts.
    """
    skipped = os.path.join(training_args.output_dir, SKIPPED_SAMPLES_FILE) if training_args is not None else None
    if skipped and not resuming:
        SkipReport(skipped).clear()  # an earlier run's list in the same --output_dir is not this run's
    dataset = LazySupervisedDataset(data_args.data_path, tokenizer, data_args, skipped_path=skipped)
    if training_args is not None and (
        getattr(training_args, "group_by_modality_length", False)
        or getattr(training_args, "train_sampling_strategy", None) == "group_by_length"
    ):
        _ = training_args.device  # the process group exists from here on: ranks share the measuring
        dataset.modality_lengths  # noqa: B018  (every rank, before the sampler needs them)
    collator = DataCollatorForSupervisedDataset(tokenizer, data_args.image_tokens_per_image)
    return {"train_dataset": dataset, "eval_dataset": None, "data_collator": collator}
