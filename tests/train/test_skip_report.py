"""skipped_samples.jsonl lists each skipped row once: DataLoader workers forked again each epoch do not repeat a row
their rank already told, and a run that does not resume starts the list afresh (a resumed one adds to it)."""

import json
import shutil
from types import SimpleNamespace

from torch.utils.data import DataLoader

from share4v.train.data import SKIPPED_SAMPLES_FILE, LazySupervisedDataset, make_supervised_data_module
from share4v.train.rows import BadRow, SkipReport
from tests.train.test_data import data_args, tokenizer_with


def _one_missing_image(tmp_path, world):
    folder = tmp_path / "data"
    shutil.copytree(world["instruct"].parent / "images", folder / "images")
    rows = json.loads(world["instruct"].read_text())[:6]
    rows[2]["image"] = "images/missing.png"
    path = folder / "data.json"
    path.write_text(json.dumps(rows))
    return path


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_workers_tell_a_row_once_over_epochs(tiny, world, tmp_path):
    path = _one_missing_image(tmp_path, world)
    report = tmp_path / "run" / SKIPPED_SAMPLES_FILE
    dataset = LazySupervisedDataset(
        str(path), tokenizer_with(tiny, 2048), data_args(path.parent, tiny), skipped_path=str(report)
    )
    loader = DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=list)
    for _epoch in range(3):  # the workers are forked again each epoch
        assert sum(1 for _ in loader) == 6
    assert [entry["where"] for entry in _lines(report)] == [f"{path}[2]"]
    assert len(dataset.report.entries()) == 1


def test_a_fresh_run_starts_the_list_afresh_and_a_resumed_one_adds(tiny, world, tmp_path):
    path = _one_missing_image(tmp_path, world)
    out = tmp_path / "run"
    out.mkdir()
    stale = {"where": "old.json[7]", "id": "old", "reason": "an earlier run's"}
    (out / SKIPPED_SAMPLES_FILE).write_text(json.dumps(stale) + "\n")
    (out / "skipped_samples.rank3.jsonl").write_text(json.dumps(stale) + "\n")  # a rank this run does not have
    args = data_args(path.parent, tiny, data_path=str(path))
    training_args = SimpleNamespace(output_dir=str(out))

    resumed = make_supervised_data_module(tokenizer_with(tiny, 2048), args, training_args, resuming=True)
    resumed["train_dataset"][2]
    resumed["train_dataset"][2]
    assert [e["where"] for e in resumed["train_dataset"].report.entries()] == ["old.json[7]", f"{path}[2]"]

    fresh = make_supervised_data_module(tokenizer_with(tiny, 2048), args, training_args)
    assert not (out / "skipped_samples.rank3.jsonl").exists()
    fresh["train_dataset"][2]
    assert [e["where"] for e in fresh["train_dataset"].report.entries()] == [f"{path}[2]"]
    assert len(_lines(out / SKIPPED_SAMPLES_FILE)) == 1


def test_entries_list_each_row_once(tmp_path):
    report = SkipReport(str(tmp_path / SKIPPED_SAMPLES_FILE))
    report.skip(BadRow("data.json[1]", "a", "image file not found"), announce=False)
    report.skip(BadRow("data.json[1]", "a", "image file not found"), announce=False)
    again = json.dumps({"where": "data.json[1]", "id": "a", "reason": "cannot read image file"}) + "\n"
    with open(tmp_path / SKIPPED_SAMPLES_FILE, "a") as handle:  # as a second worker of the same epoch may write
        handle.write(again)
    (tmp_path / "skipped_samples.rank1.jsonl").write_text(again)  # and another rank in a later epoch
    assert len(_lines(tmp_path / SKIPPED_SAMPLES_FILE)) == 2
    assert [(e["where"], e["reason"]) for e in report.entries()] == [("data.json[1]", "image file not found")]
