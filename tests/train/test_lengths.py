"""Sample lengths measured by several ranks (each its share, gathered) equal one process's, and are cached; machines
sharing the cache folder write it without colliding."""

import json

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoTokenizer

from share4v.train import lengths
from share4v.train.arguments import DataArguments
from share4v.train.data import LazySupervisedDataset
from share4v.train.lengths import cache_file, dataset_lengths


def _dataset(tiny_ckpt, data_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpt)
    tokenizer.model_max_length = 120  # some samples are capped
    args = DataArguments(image_folder=str(data_path.parent), image_aspect_ratio="pad")
    args.conv_mode, args.is_multimodal, args.image_tokens_per_image = "vicuna_v1", True, 16
    return LazySupervisedDataset(str(data_path), tokenizer, args)


def _rank_main(rank, world, init_file, tiny_ckpt, data_path, out_dir, cache_dir):
    import os

    os.environ["SHARE4V_CACHE"] = cache_dir
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    lengths = dataset_lengths(_dataset(tiny_ckpt, data_path))
    (out_dir / f"{rank}.json").write_text(json.dumps(lengths.tolist()))
    dist.destroy_process_group()


def test_ranks_share_the_measuring(tiny_ckpt, world, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARE4V_CACHE", str(tmp_path / "single-cache"))
    single = dataset_lengths(_dataset(tiny_ckpt, world["instruct"]))
    assert (single < 0).sum() == 3 and (np.abs(single) == 120).any()  # text-only rows negative; capped rows
    assert cache_file(_dataset(tiny_ckpt, world["instruct"])).is_file()
    out = tmp_path / "out"
    out.mkdir()
    args = (2, str(tmp_path / "init"), tiny_ckpt, world["instruct"], out, str(tmp_path / "shared-cache"))
    mp.spawn(_rank_main, args=args, nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads((out / f"{rank}.json").read_text()) == single.tolist()


def test_machines_writing_the_cache_at_once_do_not_collide(tmp_path, monkeypatch):
    # two machines sharing the cache folder, whose processes happen to have the same pid, write the same file
    cache = tmp_path / "lengths" / "abc.npy"
    real_save = np.save

    def save_while_another_machine_writes(file, array):
        real_save(file, array)
        monkeypatch.setattr(lengths.np, "save", real_save)
        lengths.write_cache(cache, array)  # the other machine stages, saves and renames in between

    monkeypatch.setattr(lengths.np, "save", save_while_another_machine_writes)
    lengths.write_cache(cache, np.arange(5))
    assert np.load(cache).tolist() == list(range(5))
    assert [p.name for p in cache.parent.iterdir()] == ["abc.npy"]


def test_an_unwritable_cache_is_a_warning(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level("WARNING", logger="share4v.train.lengths"):
        lengths.write_cache(blocker / "lengths" / "abc.npy", np.arange(5))
    assert "could not write the sample length cache" in caplog.text


def test_only_each_machines_first_process_writes_the_cache(tiny_ckpt, world, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    dataset = _dataset(tiny_ckpt, world["instruct"])
    assert len(dataset_lengths(dataset)) == 27 and not cache_file(dataset).exists()
