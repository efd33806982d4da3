"""Packed training rows and the loss without full-vocabulary logits equal the padded recipe."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from share4v.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from share4v.model.causal_lm_loss import causal_lm_loss, linear_cross_entropy, shift_targets
from share4v.model.packed_attention import PACKED_ATTENTION

LENGTHS = (9, 4, 13)  # text tokens per sample (the first two with an image placeholder, the last text-only)


@pytest.fixture
def model(tiny):
    model = copy.deepcopy(tiny[1]).float()
    model.config.use_cache = False
    return model


def make_batch(model, seed: int = 0) -> dict:
    """A right-padded training batch as the collator makes it: one image per row (a blank for the text-only row)."""
    generator = torch.Generator().manual_seed(seed)
    vocab, size = model.config.vocab_size, model.get_vision_tower().config.image_size
    longest = max(LENGTHS)
    input_ids = torch.zeros((len(LENGTHS), longest), dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(LENGTHS):
        ids = torch.randint(3, vocab, (length,), generator=generator)
        if row < 2:
            ids[1] = IMAGE_TOKEN_INDEX
        input_ids[row, :length] = ids
        labels[row, length // 2 : length] = ids[length // 2 :]  # the answer half is trained, as in real rows
        labels[row, 0] = ids[0] if row == 2 else IGNORE_INDEX  # a trained first token: no target may cross into it
        attention_mask[row, :length] = 1
    images = torch.randn((len(LENGTHS), 3, size, size), generator=generator)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "images": images}


def loss_and_grads(model, batch, **kwargs):
    model.zero_grad()
    loss = model(**batch, **kwargs).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, tolerance: float, what: str) -> None:
    error = (actual - expected).abs().max() / expected.abs().max().clamp(min=1e-12)
    assert error <= tolerance, f"{what}: relative error {error:.2e} > {tolerance}"


def reference_padded_loss(model, batch) -> torch.Tensor:
    """The padded recipe computed by transformers' own Llama loss on the full logits."""
    model.fused_cross_entropy = False
    with torch.no_grad():
        model.eval()
        loss = model(**batch).loss  # eval mode: LlamaForCausalLM's own loss
        model.train()
    return loss


@pytest.mark.parametrize("attention", ["sdpa", PACKED_ATTENTION])
def test_packed_loss_and_gradients_equal_the_padded_batch(model, attention):
    batch = make_batch(model)
    expected_loss = reference_padded_loss(model, batch)
    model.train()
    model.fused_cross_entropy = False
    padded_loss, padded_grads = loss_and_grads(model, batch)
    assert_close_relative(padded_loss, expected_loss, 1e-6, "padded loss vs transformers' loss")

    model.set_attn_implementation(attention)
    model.fused_cross_entropy = True
    packed_loss, packed_grads = loss_and_grads(model, batch, pack_sequences=True)
    assert_close_relative(packed_loss, padded_loss, 1e-5, "packed loss")
    assert packed_grads.keys() == padded_grads.keys() and len(padded_grads) > 10
    for name, grad in padded_grads.items():
        assert_close_relative(packed_grads[name], grad, 1e-5, f"gradient of {name}")


def test_packed_loss_is_normalised_by_num_items_in_batch(model):
    """Gradient accumulation (the Trainer passes the step's target count): sum over tokens / that count."""
    batch = make_batch(model)
    model.train()
    mean_loss = model(**batch, pack_sequences=True).loss
    targets = int((shift_targets(batch["labels"]) != IGNORE_INDEX).sum())
    summed = model(**batch, pack_sequences=True, num_items_in_batch=torch.tensor(4 * targets)).loss
    torch.testing.assert_close(summed, mean_loss / 4)


def packed_logits_per_sample(model, batch) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        inputs["images"] = batch["images"][:2]  # no labels: only the rows with a placeholder take an image
        logits = model(**inputs, pack_sequences=True).logits[0]
    return list(torch.split(logits, merged_lengths(model, batch)))


def merged_lengths(model, batch) -> list[int]:
    patches = model.get_vision_tower().num_patches
    has_image = (batch["input_ids"] == IMAGE_TOKEN_INDEX).any(dim=1).tolist()
    return [length + (patches - 1 if image else 0) for length, image in zip(LENGTHS, has_image, strict=True)]


@pytest.mark.parametrize("attention", ["sdpa", PACKED_ATTENTION])
def test_a_packed_sample_never_sees_another(model, attention):
    model.set_attn_implementation(attention)
    batch = make_batch(model)
    before = packed_logits_per_sample(model, batch)
    changed = {key: value.clone() for key, value in batch.items()}
    changed["input_ids"][1, 2:4] = (changed["input_ids"][1, 2:4] + 7) % model.config.vocab_size
    changed["images"][1] = torch.randn_like(changed["images"][1])
    after = packed_logits_per_sample(model, changed)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(after[2], before[2], rtol=0, atol=1e-6)
    assert (after[1] - before[1]).abs().max() > 1e-3, "the perturbed sample itself must change"


def test_packed_logits_equal_each_sample_alone(model):
    model.set_attn_implementation(PACKED_ATTENTION)
    batch = make_batch(model)
    packed = packed_logits_per_sample(model, batch)
    with torch.no_grad():
        for row, length in enumerate(LENGTHS):
            images = batch["images"][row : row + 1] if row < 2 else None
            alone = model(input_ids=batch["input_ids"][row : row + 1, :length], images=images).logits[0]
            torch.testing.assert_close(packed[row], alone, rtol=1e-5, atol=1e-5)


def test_targets_never_cross_a_sample_boundary():
    labels = torch.tensor([[1, 2, 3, 4, 5, 6]])
    assert shift_targets(labels).tolist() == [[2, 3, 4, 5, 6, IGNORE_INDEX]]
    assert shift_targets(labels, [2, 4]).tolist() == [[2, IGNORE_INDEX, 4, 5, 6, IGNORE_INDEX]]


def test_linear_cross_entropy_equals_the_plain_loss_in_value_and_gradients(monkeypatch):
    monkeypatch.setattr("share4v.model.causal_lm_loss.LOGITS_PER_CHUNK", 3 * 50)  # several chunks of 3 rows
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn((10, 16), generator=generator, requires_grad=True)
    weight = torch.randn((50, 16), generator=generator, requires_grad=True)
    targets = torch.randint(0, 50, (10,), generator=generator)
    fused = linear_cross_entropy(hidden, weight, targets)
    (fused * 2).backward()
    fused_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    plain = F.cross_entropy(F.linear(hidden, weight).float(), targets)
    (plain * 2).backward()
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(fused_grads[0], hidden.grad)
    torch.testing.assert_close(fused_grads[1], weight.grad)


def test_linear_cross_entropy_follows_autocast():
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn((6, 32), generator=generator)
    weight = torch.randn((40, 32), generator=generator, requires_grad=True)
    targets = torch.randint(0, 40, (6,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(hidden, weight, targets)
        plain = F.cross_entropy(F.linear(hidden, weight).float(), targets)
    torch.testing.assert_close(fused, plain, rtol=1e-3, atol=1e-3)
    assert abs(fused.item() - F.cross_entropy(F.linear(hidden, weight), targets).item()) > 1e-5  # bf16, not fp32


def test_a_batch_without_targets_has_zero_loss_and_gradients():
    lm_head = torch.nn.Linear(8, 20, bias=False)
    hidden = torch.randn((1, 5, 8), requires_grad=True)
    labels = torch.full((1, 5), IGNORE_INDEX)
    loss = causal_lm_loss(hidden, lm_head, labels)
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad.abs().sum() == 0 and lm_head.weight.grad.abs().sum() == 0


def test_pack_sequences_needs_input_ids(model):
    with pytest.raises(ValueError, match="pack_sequences=True needs input_ids"):
        model(inputs_embeds=torch.zeros((1, 3, model.config.hidden_size)), pack_sequences=True)


def test_packed_attention_takes_autocast_inputs_as_sdpa_does(monkeypatch):
    """Under autocast, rotary embeddings leave query/key in fp32 while value is bf16: all three go to bf16, so
    that the (CUDA) flash kernel, which takes no fp32, is chosen."""
    from share4v.model import packed_attention
    from share4v.model.packed_attention import packed_attention_forward

    seen = []
    record = lambda query, scale: seen.append(query.dtype) and False  # noqa: E731
    monkeypatch.setattr(packed_attention, "_varlen_kernel_serves", record)

    generator = torch.Generator().manual_seed(0)
    query, key = (torch.randn((1, 2, 7, 8), generator=generator) for _ in range(2))
    value = torch.randn((1, 2, 7, 8), generator=generator).to(torch.bfloat16)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, _ = packed_attention_forward(None, query, key, value, None, cu_seq_lens_q=cu, max_length_q=4)
    assert seen == [torch.bfloat16]
    assert output.dtype == torch.bfloat16 and output.shape == (1, 7, 2, 8)
    for start, end in ((0, 3), (3, 7)):
        expected = F.scaled_dot_product_attention(
            *(t[:, :, start:end].to(torch.bfloat16) for t in (query, key, value)), is_causal=True
        )
        torch.testing.assert_close(output[0, start:end], expected[0].transpose(0, 1), rtol=2e-2, atol=2e-2)


def test_training_mode_without_images_or_packing_gives_transformers_loss(model):
    """The fused loss on a plain (unpacked, image-free) batch: no merge ran, the ids go to the decoder."""
    batch = make_batch(model)
    text_only = {
        "input_ids": batch["input_ids"][2:],
        "labels": batch["labels"][2:],
        "attention_mask": batch["attention_mask"][2:],
    }
    model.eval()
    with torch.no_grad():
        expected = model(**text_only).loss
    model.train()
    model.fused_cross_entropy = True
    with torch.no_grad():
        torch.testing.assert_close(model(**text_only).loss, expected)


def test_the_fused_loss_steps_aside_where_it_cannot_read_the_weight_or_would_underflow(monkeypatch):
    import share4v.model.causal_lm_loss as loss_module

    calls = []
    monkeypatch.setattr(loss_module, "linear_cross_entropy", lambda *a: calls.append(1) or torch.zeros(()))
    hidden, labels = torch.randn((1, 6, 8)), torch.randint(0, 20, (1, 6))
    plain = torch.nn.Linear(8, 20, bias=False)
    causal_lm_loss(hidden, plain, labels)
    assert calls == [1]
    hooked = torch.nn.Linear(8, 20, bias=False)
    hooked.register_forward_pre_hook(lambda module, args: None)  # e.g. DeepSpeed's gather, an offload hook
    causal_lm_loss(hidden, hooked, labels)
    with torch.autocast("cpu", dtype=torch.float16):
        causal_lm_loss(hidden, plain, labels)
    assert calls == [1]


def test_linear_cross_entropy_without_gradients_gives_the_same_value():
    generator = torch.Generator().manual_seed(2)
    hidden, weight = torch.randn((9, 16), generator=generator), torch.randn((30, 16), generator=generator)
    targets = torch.randint(0, 30, (9,), generator=generator)
    with torch.no_grad():
        value = linear_cross_entropy(hidden, weight, targets)
    torch.testing.assert_close(value, F.cross_entropy(F.linear(hidden, weight), targets))
