"""The command line ends a bad run in one line: also a bad sample under --strict_data met in a DataLoader worker, which
torch raises again in the main process with the worker's whole traceback as its message."""

import json
import shutil
import sys

import pytest
from torch.utils.data import DataLoader, Dataset

from share4v.train.preprocess import SampleError
from share4v.train.train import error_message, main

REASON = "bad training sample data.json[2] (id instruct-2): image file not found: images/missing.png (--strict_data)"


class _Failing(Dataset):
    def __init__(self, error):
        self.error = error

    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise self.error


@pytest.mark.parametrize("error", [SampleError(REASON), FileNotFoundError("no such file: a.png")])
def test_a_worker_error_is_its_own_message(error):
    with pytest.raises(type(error)) as raised:
        list(DataLoader(_Failing(error), num_workers=1))
    assert "Original Traceback" in str(raised.value)  # what torch raises in the main process
    assert error_message(raised.value) == str(error)
    assert error_message(error) == str(error)  # one raised in the main process is left as it is


def test_strict_data_with_workers_ends_in_one_line(world, tiny_ckpt, tmp_path, monkeypatch):
    folder = tmp_path / "data"
    shutil.copytree(world["instruct"].parent / "images", folder / "images")
    rows = json.loads(world["instruct"].read_text())[:6]
    rows[2]["image"] = "images/missing.png"  # found only when the sample is built, in a worker
    (folder / "data.json").write_text(json.dumps(rows))
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--model_name_or_path", str(tiny_ckpt), "--version", "v1", "--data_path", str(folder / "data.json"),
        "--image_folder", str(folder), "--strict_data", "True", "--dataloader_num_workers", "1", "--use_cpu", "True",
        "--max_steps", "6", "--per_device_train_batch_size", "2", "--save_strategy", "no", "--report_to", "none",
        "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--mm_use_im_patch_token", "False",
        "--output_dir", str(tmp_path / "run"),
    ])  # fmt: skip
    with pytest.raises(SystemExit) as raised:
        main()
    message = str(raised.value.code)
    assert message.startswith("error: bad training sample ") and message.endswith("(--strict_data)")
    assert "data.json[2] (id instruct-2): image file not found" in message and "\n" not in message
