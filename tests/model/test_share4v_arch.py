"""The image/text merge as a pure function, against hand-built expectations."""

import pytest
import torch
from torch import nn

from share4v.constants import IGNORE_INDEX
from share4v.constants import IMAGE_TOKEN_INDEX as IMG
from share4v.model.share4v_arch import assign_images, infer_padding_side, merge_image_features

D, P = 4, 3  # embedding width, image tokens per image


@pytest.fixture
def embed():
    torch.manual_seed(0)
    return nn.Embedding(20, D)


def features(n):
    return torch.arange(n * P * D, dtype=torch.float32).view(n, P, D) + 100


def test_single_image_in_the_middle(embed):
    ids = torch.tensor([[1, 5, IMG, 6, 7]])
    labels = torch.tensor([[IGNORE_INDEX, 5, IGNORE_INDEX, 6, 7]])
    feats = features(1)
    out = merge_image_features(ids, feats, embed, labels=labels)
    expected = torch.cat([embed(torch.tensor([1, 5])), feats[0], embed(torch.tensor([6, 7]))])
    assert torch.equal(out.inputs_embeds[0], expected)
    assert out.labels[0].tolist() == [IGNORE_INDEX, 5, *[IGNORE_INDEX] * P, 6, 7]
    assert out.attention_mask.tolist() == [[1] * (4 + P)]
    assert out.position_ids.tolist() == [list(range(4 + P))]


def test_several_images_per_sample_and_text_only_rows(embed):
    ids = torch.tensor([[1, IMG, 2, IMG, 3], [1, 4, IMG, 0, 0], [1, 8, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    feats = features(3)
    out = merge_image_features(ids, feats, embed, attention_mask=mask, labels=ids.clone())
    row0 = torch.cat([embed(torch.tensor([1])), feats[0], embed(torch.tensor([2])), feats[1], embed(torch.tensor([3]))])
    row1 = torch.cat([embed(torch.tensor([1, 4])), feats[2]])
    row2 = embed(torch.tensor([1, 8, 9]))
    width = 3 + 2 * P
    assert out.inputs_embeds.shape == (3, width, D)
    assert torch.equal(out.inputs_embeds[0], row0)
    assert torch.equal(out.inputs_embeds[1, : 2 + P], row1) and out.attention_mask[1].sum() == 2 + P
    assert torch.equal(out.inputs_embeds[2, :3], row2) and out.inputs_embeds[2, 3:].abs().sum() == 0
    assert out.labels[2].tolist() == [1, 8, 9] + [IGNORE_INDEX] * (width - 3)  # padding never trains


def test_one_image_per_row_convention_skips_blank_images(embed):
    ids = torch.tensor([[1, IMG, 2], [1, 3, 4]])
    feats = features(2)  # row 1's image is the collator's blank placeholder
    with pytest.raises(ValueError, match="1 <image> tokens .* but 2 images"):  # outside training: an error
        merge_image_features(ids, feats, embed)
    out = merge_image_features(ids, feats, embed, labels=ids.clone())
    assert torch.equal(out.inputs_embeds[0, 1 : 1 + P], feats[0])
    assert torch.equal(out.inputs_embeds[1, :3], embed(torch.tensor([1, 3, 4])))
    assert out.attention_mask[1].tolist() == [1, 1, 1] + [0] * (P - 1)


def test_left_padding_input_and_output(embed):
    right = merge_image_features(
        torch.tensor([[1, IMG, 2, 3], [1, IMG, 0, 0]]),
        features(2),
        embed,
        attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
        padding_side="left",
    )
    left = merge_image_features(
        torch.tensor([[1, IMG, 2, 3], [0, 0, 1, IMG]]),
        features(2),
        embed,
        attention_mask=torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]]),
        padding_side="left",
    )
    for out in (right, left):
        assert out.attention_mask[1].tolist() == [0, 0] + [1] * (1 + P)
        assert out.position_ids[1].tolist() == [0, 0, *range(1 + P)]
    assert torch.equal(right.inputs_embeds, left.inputs_embeds)


def test_padding_side_inference():
    assert infer_padding_side(torch.tensor([[0, 1], [1, 1]])) == "left"
    assert infer_padding_side(torch.tensor([[1, 0], [1, 1]])) == "right"
    assert infer_padding_side(None) == "right"


def test_mismatch_is_a_loud_error(embed):
    with pytest.raises(ValueError, match=r"the prompts hold 3 <image> tokens \(per row: \[2, 1\]\) but 2 images"):
        merge_image_features(torch.tensor([[IMG, IMG], [IMG, 1]]), features(2), embed)
    with pytest.raises(ValueError, match="but 1 images were given"):
        assign_images([0, 0], 1)
    with pytest.raises(ValueError, match="but 2 images were given"):
        assign_images([0, 0], 2)  # images but no placeholders: never silently dropped
    assert assign_images([0, 0], 2, allow_blank_images=True) == [[0], [1]]  # training: blanks, assigned not placed
    assert assign_images([1, 0], 2, allow_blank_images=True) == [[0], [1]]


def test_text_only_batch_keeps_the_images_in_the_graph(embed):
    # a training batch of text-only rows (the collator's blanks): the features get a zero gradient, not none, so
    # that the tower and projector reduce the same gradients on every rank of a sharded run (FSDP2 hangs otherwise)
    feats = features(2).requires_grad_()
    ids = torch.tensor([[1, 3, 4], [1, 5, 6]])
    out = merge_image_features(ids, feats, embed, labels=ids.clone())
    assert torch.equal(out.inputs_embeds, embed(ids))
    out.inputs_embeds.sum().backward()
    assert feats.grad is not None and torch.equal(feats.grad, torch.zeros_like(feats))


def test_gradients_reach_image_features(embed):
    feats = features(1).requires_grad_()
    out = merge_image_features(torch.tensor([[1, IMG, 2]]), feats, embed)
    out.inputs_embeds.sum().backward()
    assert torch.equal(feats.grad, torch.ones_like(feats))
