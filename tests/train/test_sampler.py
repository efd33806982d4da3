"""The modality/length-grouped order: a permutation, one modality per megabatch, balanced ranks, reproducible;
`--group_by_length` groups by the lengths the dataset knows."""

import random

import pytest
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from share4v.train.data import LazySupervisedDataset
from share4v.train.sampler import (
    ModalityLengthGroupedSampler,
    length_grouped_indices,
    modality_length_grouped_indices,
    split_evenly,
)
from share4v.train.train import build_trainer


def _lengths(seed=0, images=70, texts=30):
    rng = random.Random(seed)
    lengths = [rng.randint(50, 2000) for _ in range(images)] + [-rng.randint(20, 800) for _ in range(texts)]
    rng.shuffle(lengths)
    return lengths


def test_order_is_a_permutation_with_one_modality_per_megabatch():
    lengths = _lengths()
    batch, world = 4, 2
    order = modality_length_grouped_indices(lengths, batch, world, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(len(lengths)))
    megabatch = batch * world
    leftover = 70 % megabatch + 30 % megabatch  # both modalities' last partial megabatches go last, together
    head = order[: len(order) - leftover]
    for start in range(0, len(head), megabatch):
        assert len({lengths[i] > 0 for i in head[start : start + megabatch]}) == 1


def test_megabatch_is_sorted_and_balanced_over_ranks():
    lengths = [random.Random(1).randint(1, 1000) for _ in range(64)]
    order = length_grouped_indices(lengths, 4, 4, torch.Generator().manual_seed(3))
    for start in range(0, 64, 16):
        ranks = [order[start + 4 * r : start + 4 * r + 4] for r in range(4)]
        totals = [sum(lengths[i] for i in rank) for rank in ranks]
        block = sorted((lengths[i] for i in order[start : start + 16]), reverse=True)
        assert max(totals) - min(totals) <= block[0]  # greedy balance: within the longest sample


def test_split_evenly_balances_equal_sized_chunks():
    lengths = [10, 9, 8, 1, 1, 1]
    chunks = split_evenly([0, 1, 2, 3, 4, 5], lengths, 2)
    assert [len(c) for c in chunks] == [3, 3]
    assert sorted(sum(lengths[i] for i in c) for c in chunks) == [12, 18]


def test_sampler_is_reproducible_per_epoch():
    lengths = _lengths(2)
    a = ModalityLengthGroupedSampler(4, 2, lengths, seed=7)
    b = ModalityLengthGroupedSampler(4, 2, lengths, seed=7)
    assert list(a) == list(b) and len(a) == len(lengths)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)


def test_group_by_length_uses_the_dataset_lengths(world, tmp_path, monkeypatch):
    trainer = build_trainer(argv=[
        "--model_name_or_path", str(world["llm"]), "--vision_tower", str(world["tower"]), "--version", "v1",
        "--data_path", str(world["instruct"]), "--image_folder", str(world["instruct"].parent), "--use_cpu", "True",
        "--report_to", "none", "--group_by_length", "True", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "3", "--output_dir", str(tmp_path),
    ])  # fmt: skip
    # transformers' own path would build every sample (images and all) to measure it
    monkeypatch.setattr(LazySupervisedDataset, "__getitem__", lambda self, i: pytest.fail("a sample was built"))
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler) and sampler.batch_size == 6
    assert sampler.lengths == trainer.train_dataset.lengths and sorted(sampler) == list(range(27))
