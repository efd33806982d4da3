"""The data pipeline: samples, exact lengths, truncation that never cuts an image, collation, bad samples."""

import json
import shutil

import pytest
import torch

from share4v.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from share4v.train import lengths
from share4v.train.arguments import DataArguments
from share4v.train.data import (
    DataCollatorForSupervisedDataset,
    LazySupervisedDataset,
    merged_length,
    sample_turns,
    truncate_to_budget,
)
from share4v.train.preprocess import SampleError

P = 16  # image tokens per image of the tiny tower (56 px / 14 px patches)


def data_args(folder, tiny, conv_mode="vicuna_v1", **overrides):
    args = DataArguments(image_folder=str(folder), image_aspect_ratio="pad", **overrides)
    args.conv_mode, args.is_multimodal = conv_mode, True
    args.image_processor, args.image_tokens_per_image = tiny[2], P
    return args


def tokenizer_with(tiny, max_length):
    tokenizer = tiny[0]
    tokenizer.model_max_length = max_length
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def test_truncation_keeps_whole_images_only():
    ids = [1, 5, IMAGE_TOKEN_INDEX, 6, 7, IMAGE_TOKEN_INDEX, 8]
    labels = [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7, IGNORE_INDEX, 8]
    assert truncate_to_budget(ids, labels, 100, 10) == (ids, labels, 2)
    assert merged_length(ids, 10) == 25
    # 24 fits "1 5 [img] 6 7" (14) but not the second image (24): it is dropped whole, never half-spliced
    assert truncate_to_budget(ids, labels, 23, 10) == (ids[:5], labels[:5], 1)
    assert truncate_to_budget(ids, labels, 11, 10) == (ids[:2], labels[:2], 0)


def test_samples_and_exact_lengths(tiny, world):
    tokenizer = tokenizer_with(tiny, 2048)
    dataset = LazySupervisedDataset(str(world["instruct"]), tokenizer, data_args(world["instruct"].parent, tiny))
    assert len(dataset) == 27  # 24 image rows + 3 text-only rows
    lengths = dataset.modality_lengths
    for index in range(len(dataset)):
        sample = dataset[index]
        built = merged_length(sample["input_ids"].tolist(), P)
        has_image = "image" in dataset.list_data_dict[index]
        assert lengths[index] == (built if has_image else -built)
        assert len(sample["images"]) == 1 and sample["images"][0].shape == (3, 56, 56)
        if not has_image:
            assert torch.count_nonzero(sample["images"][0]) == 0  # the original's blank image
    assert dataset.lengths == [abs(x) for x in lengths]


def test_length_cache_is_reused(tiny, world, monkeypatch):
    tokenizer = tokenizer_with(tiny, 2048)
    args = data_args(world["instruct"].parent, tiny)
    first = LazySupervisedDataset(str(world["instruct"]), tokenizer, args).modality_lengths
    second = LazySupervisedDataset(str(world["instruct"]), tokenizer, args)
    monkeypatch.setattr(lengths, "measure", lambda *args, **kwargs: pytest.fail("recomputed despite the cache"))
    assert second.modality_lengths == first


def test_long_samples_are_cut_to_the_budget(tiny, world):
    full = LazySupervisedDataset(
        str(world["instruct"]), tokenizer_with(tiny, 2048), data_args(world["instruct"].parent, tiny)
    ).lengths
    budget = 130  # past the first answer of every image row, before the end of the second
    assert min(full) < budget < max(full)
    dataset = LazySupervisedDataset(
        str(world["instruct"]), tokenizer_with(tiny, budget), data_args(world["instruct"].parent, tiny)
    )
    for index in range(len(dataset)):
        sample = dataset[index]
        assert merged_length(sample["input_ids"].tolist(), P) == min(full[index], budget)
        assert (sample["labels"] != IGNORE_INDEX).any()
        assert dataset.lengths[index] == min(full[index], budget)


def test_collator_pads_right_and_gives_one_image_per_row(tiny, world):
    tokenizer = tokenizer_with(tiny, 2048)
    dataset = LazySupervisedDataset(str(world["instruct"]), tokenizer, data_args(world["instruct"].parent, tiny))
    samples = [dataset[0], dataset[8]]  # an image row and a text-only row
    assert "image" not in dataset.list_data_dict[8]
    batch = DataCollatorForSupervisedDataset(tokenizer, P)(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, max(lengths))
    for row, length in enumerate(lengths):
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (max(lengths) - length)
        assert torch.equal(batch["input_ids"][row, :length], samples[row]["input_ids"])
        assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
    assert batch["images"].shape == (2, 3, 56, 56)


def test_collated_batch_trains_the_model(tiny, world):
    tokenizer, model = tokenizer_with(tiny, 2048), tiny[1]
    dataset = LazySupervisedDataset(str(world["instruct"]), tokenizer, data_args(world["instruct"].parent, tiny))
    batch = DataCollatorForSupervisedDataset(tokenizer, P)([dataset[i] for i in (0, 8, 3)])
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss.item() > 0


def _broken_world(tmp_path, world):
    folder = tmp_path / "data"
    shutil.copytree(world["instruct"].parent / "images", folder / "images")
    rows = json.loads(world["instruct"].read_text())[:6]
    (folder / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    rows[1]["image"] = "images/corrupt.png"
    rows[2]["image"] = "images/missing.png"
    rows[3]["conversations"] = rows[3]["conversations"][:1]  # ends with the question: malformed
    rows[4]["conversations"][0]["value"] += " word" * 400  # every answer lies past model_max_length
    path = folder / "data.json"
    path.write_text(json.dumps(rows))
    return path


def test_bad_samples_are_reported_and_skipped(tiny, world, tmp_path):
    tokenizer = tokenizer_with(tiny, 200)
    path = _broken_world(tmp_path, world)
    report = tmp_path / "skipped.jsonl"
    dataset = LazySupervisedDataset(str(path), tokenizer, data_args(path.parent, tiny), skipped_path=str(report))
    assert len(dataset) == 5  # the malformed row is left out at once
    samples = [dataset[i] for i in range(len(dataset))]
    assert all((s["labels"] != IGNORE_INDEX).any() for s in samples)
    reasons = {entry["id"]: entry["reason"] for entry in map(json.loads, report.read_text().splitlines())}
    assert set(reasons) == {"instruct-1", "instruct-2", "instruct-3", "instruct-4"}
    assert "cannot read image file" in reasons["instruct-1"]
    assert "not found" in reasons["instruct-2"]
    assert "ends with a human turn" in reasons["instruct-3"]
    assert "truncated away" in reasons["instruct-4"]


def test_checking_many_rows_shows_progress(tiny, world, monkeypatch, capsys):
    import share4v.train.data as data_module

    tokenizer, args = tokenizer_with(tiny, 2048), data_args(world["instruct"].parent, tiny)
    LazySupervisedDataset(str(world["instruct"]), tokenizer, args)
    assert "checking" not in capsys.readouterr().err  # a short file: no bar
    monkeypatch.setattr(data_module, "PROGRESS_FROM_ROWS", 2)
    dataset = LazySupervisedDataset(str(world["instruct"]), tokenizer, args)
    shown = capsys.readouterr().err
    assert f"checking {world['instruct'].name}" in shown and f"{len(dataset)}/{len(dataset)}" in shown


def test_strict_data_fails_on_the_first_bad_sample(tiny, world, tmp_path):
    tokenizer = tokenizer_with(tiny, 200)
    path = _broken_world(tmp_path, world)
    with pytest.raises(SampleError, match=r"data.json\[3\] \(id instruct-3\).*--strict_data"):
        LazySupervisedDataset(str(path), tokenizer, data_args(path.parent, tiny, strict_data=True))


def test_jsonl_with_a_broken_line(tiny, world, tmp_path):
    rows = json.loads(world["instruct"].read_text())[:3]
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n{not json\n\n" + json.dumps(rows[1]) + "\n")
    report = tmp_path / "skipped.jsonl"
    args = data_args(world["instruct"].parent, tiny)
    dataset = LazySupervisedDataset(str(path), tokenizer_with(tiny, 2048), args, skipped_path=str(report))
    assert len(dataset) == 2
    assert json.loads(report.read_text())["where"] == f"{path}:2"


def test_unreadable_json_is_one_clear_error(tiny, tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[{"id": 1}, oops]')
    with pytest.raises(ValueError, match=r"data.json: not valid JSON \(line 1, column 13\)"):
        LazySupervisedDataset(str(path), tiny[0], data_args(tmp_path, tiny))


def _image_world(tmp_path, world, rows_kept):
    """A copy of the instruct set whose images are only those of rows `rows_kept` (None: every image kept)."""
    folder = tmp_path / "data"
    rows = json.loads(world["instruct"].read_text())
    (folder / "images").mkdir(parents=True)
    for index, row in enumerate(rows):
        if "image" in row and (rows_kept is None or index in rows_kept):
            shutil.copy(world["instruct"].parent / row["image"], folder / row["image"])
    path = folder / "data.json"
    path.write_text(json.dumps(rows))
    return path


def test_a_wrong_image_folder_fails_at_start_up(tiny, world, tmp_path):
    path = _image_world(tmp_path, world, rows_kept=set())
    tokenizer = tokenizer_with(tiny, 2048)
    with pytest.raises(FileNotFoundError, match=r"--image_folder \S+nowhere is not a folder") as err:
        LazySupervisedDataset(str(path), tokenizer, data_args(tmp_path / "nowhere", tiny))
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"data.json: none of 24 sampled images exists under") as err:
        LazySupervisedDataset(str(path), tokenizer, data_args(path.parent, tiny))  # the folder, but no images
    assert "\n" not in str(err.value) and str(path.parent / "images") in str(err.value)


def test_absolute_paths_urls_and_data_uris_are_not_looked_for_under_the_folder(tiny, world, tmp_path):
    path = _image_world(tmp_path, world, rows_kept={0, 1, 2})
    rows = json.loads(path.read_text())
    for row in rows:
        if "image" in row:  # every local image named by its absolute path; the others fetched or inline
            local = path.parent / row["image"]
            row["image"] = str(local) if local.is_file() else "https://example.com/a.png"
    rows[-1] = {**rows[0], "image": "data:image/png;base64,AAAA"}
    path.write_text(json.dumps(rows))
    nowhere = data_args(tmp_path / "nowhere", tiny)  # a folder that does not exist: nothing asks for it
    assert len(LazySupervisedDataset(str(path), tokenizer_with(tiny, 2048), nowhere)) == 27


def test_some_missing_images_only_warn(tiny, world, tmp_path, caplog):
    path = _image_world(tmp_path, world, rows_kept={0, 1, 2})
    with caplog.at_level("WARNING", logger="share4v.train.data"):
        dataset = LazySupervisedDataset(str(path), tokenizer_with(tiny, 2048), data_args(path.parent, tiny))
    assert "21 of 24 sampled images are missing" in caplog.text
    assert len(dataset) == 27  # skipped one at a time later, as before


def test_text_only_model_refuses_image_rows_without_looking_for_the_image_folder(tiny, world, tmp_path):
    """A model without a vision tower never looks up --image_folder: given image rows and a folder that does not
    exist, it refuses the rows (check_no_image_rows), not the folder (check_image_folder); text rows alone load."""
    args = data_args(tmp_path / "nowhere", tiny)
    args.is_multimodal = False
    with pytest.raises(ValueError, match=r"24 of 27 rows have images .* but the model has no vision tower"):
        LazySupervisedDataset(str(world["instruct"]), tokenizer_with(tiny, 2048), args)
    path = tmp_path / "text.json"
    path.write_text(json.dumps([row for row in json.loads(world["instruct"].read_text()) if "image" not in row]))
    assert len(LazySupervisedDataset(str(path), tokenizer_with(tiny, 2048), args)) == 3


def test_no_usable_sample_at_all_is_one_line(tiny, world, tmp_path):
    path = _image_world(tmp_path, world, rows_kept={0})
    rows = [row for row in json.loads(path.read_text()) if "image" in row]
    path.write_text(json.dumps(rows))
    dataset = LazySupervisedDataset(str(path), tokenizer_with(tiny, 2048), data_args(path.parent, tiny))
    dataset.list_data_dict[0]["image"] = "images/gone.png"  # the one good image goes missing after start-up
    with pytest.raises(SampleError, match=r"data.json: none of the 24 samples could be used") as err:
        dataset[3]
    assert "\n" not in str(err.value)


def test_image_markers_without_an_image_are_a_bad_row(tiny, world, tmp_path):
    rows = json.loads(world["instruct"].read_text())
    text_row = next(index for index, row in enumerate(rows) if "image" not in row)
    rows[text_row]["conversations"][0]["value"] = "<image>\nWhat is shown?"
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))
    report = tmp_path / "skipped.jsonl"
    args = data_args(world["instruct"].parent, tiny)
    with pytest.raises(SampleError, match="1 <image> markers in the text but no 'image' in the row"):
        sample_turns(rows[text_row], False, args)
    dataset = LazySupervisedDataset(str(path), tokenizer_with(tiny, 2048), args, skipped_path=str(report))
    assert len(dataset) == 26  # left out at start-up, not trained as the literal text "<image>"
    entry = json.loads(report.read_text())
    assert entry["where"] == f"{path}[{text_row}]" and "no 'image' in the row" in entry["reason"]
    with pytest.raises(SampleError, match=rf"data.json\[{text_row}\] .*no 'image' in the row \(--strict_data\)"):
        LazySupervisedDataset(
            str(path), tokenizer_with(tiny, 2048), data_args(world["instruct"].parent, tiny, strict_data=True)
        )
