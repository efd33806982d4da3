import pytest
from PIL import Image

from share4v.conversation import SeparatorStyle, conv_templates, get_conv_template

VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
HUMAN = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions."
)
MMTAG = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant is able to understand "
    "the visual content that the user provides, and assist the user with a variety of tasks using natural "
    "language.The visual content will be provided with the following format: <Image>visual content</Image>."
)
SHARE4V_LLAMA_2 = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)


def two_turns(name: str, first=None) -> str:
    conv = get_conv_template(name)
    conv.append_message(conv.roles[0], first if first is not None else "<image>\nWhat is it?")
    conv.append_message(conv.roles[1], "A cat.")
    conv.append_message(conv.roles[0], "What colour?")
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


EXPECTED = {
    "vicuna_v1": VICUNA + " USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: What colour? ASSISTANT:",
    "v1": VICUNA + " USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: What colour? ASSISTANT:",
    "share4v_v1": HUMAN + " USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: What colour? ASSISTANT:",
    "v1_mmtag": MMTAG + " USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: What colour? ASSISTANT:",
    "share4v_v0": HUMAN + "###Human: <image>\nWhat is it?###Assistant: A cat.###Human: What colour?###Assistant:",
    "v0_mmtag": MMTAG + "###Human: <image>\nWhat is it?###Assistant: A cat.###Human: What colour?###Assistant:",
    # plain: the user separator only where generation starts (an answered turn runs straight into its answer)
    "plain": "<image>\nWhat is it?A cat.\nWhat colour?\n",
    "v0_plain": "<image>\nWhat is it?A cat.\nWhat colour?\n",
    "share4v_llama_2": "[INST] <<SYS>>\n" + SHARE4V_LLAMA_2 + "\n<</SYS>>\n\n<image>\nWhat is it? [/INST] A cat. </s>"
    "<s>[INST] What colour? [/INST]",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_two_turn_prompt_matches_spec(name):
    assert two_turns(name) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(conv_templates))
def test_segments_concatenate_to_the_prompt(name):
    conv = get_conv_template(name)
    for role, message in [(0, "<image>\nWhat is it?"), (1, "A cat."), (0, "What colour?"), (1, "Black.")]:
        conv.append_message(conv.roles[role], message)
    segments = conv.get_segments()
    assert "".join(text for text, _ in segments) == conv.get_prompt()
    targets = [text for text, is_target in segments if is_target]
    answers = ["A cat.", "Black."]
    if name in ("default", "v0"):  # the canned few-shot answer of vicuna_v0 is an assistant turn too
        targets = targets[1:]
    end = conv.sep2 if conv.sep_style in (SeparatorStyle.TWO, SeparatorStyle.LLAMA_2) else conv.sep
    assert [t.removesuffix(end).strip() for t in targets] == answers


@pytest.mark.parametrize(
    ("name", "targets"),
    [
        ("vicuna_v1", [" A cat.</s>", " Black.</s>"]),
        ("share4v_v0", [" A cat.###", " Black.###"]),
        ("llama_2", [" A cat. </s>", " Black. </s>"]),
        ("plain", ["A cat.\n", "Black.\n"]),
    ],
)
def test_target_is_what_follows_the_generation_prompt(name, targets):
    """Each target piece continues exactly the prompt that ends at that assistant slot."""
    history = []
    for (question, answer), target in zip(
        [("<image>\nWhat is it?", "A cat."), ("Colour?", "Black.")], targets, strict=True
    ):
        open_conv = get_conv_template(name)
        for role, message in [*history, (0, question), (1, None)]:
            open_conv.append_message(open_conv.roles[role], message)
        history += [(0, question), (1, answer)]
        full = get_conv_template(name)
        for role, message in history:
            full.append_message(full.roles[role], message)
        full_segments = full.get_segments()
        assert full_segments[-1] == (target, True)
        prefix = "".join(text for text, _ in full_segments[:-1])
        if name != "plain":  # plain writes the generation separator only when no answer follows
            assert open_conv.get_prompt() == prefix


def test_llama_2_uses_meta_system_prompt():
    prompt = two_turns("llama_2")
    assert prompt.startswith("[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant. Always answer")
    assert prompt.endswith(
        "please don't share false information.\n<</SYS>>\n\n<image>\nWhat is it? [/INST] A cat. "
        "</s><s>[INST] What colour? [/INST]"
    )


def test_v0_keeps_its_few_shot_messages():
    prompt = two_turns("v0")
    assert prompt.startswith(HUMAN + "###Human: What are the key differences between renewable and non-renewable")
    assert prompt.endswith(
        "economic and social instability.\n###Human: <image>\nWhat is it?###Assistant: A cat."
        "###Human: What colour?###Assistant:"
    )
    assert two_turns("default") == prompt


def test_image_tuple_message_moves_image_token_first():
    image = Image.new("RGB", (20, 10))
    assert two_turns("vicuna_v1", ("What is it?<image>", image, "Default")) == EXPECTED["vicuna_v1"]


def test_mmtag_tuple_message_inserts_image_turns():
    image = Image.new("RGB", (20, 10))
    prompt = two_turns("v1_mmtag", ("<image>\nWhat is it?", image, "Default"))
    assert prompt == (
        MMTAG + " USER: <Image><image></Image> ASSISTANT: Received.</s>USER: What is it? "
        "ASSISTANT: A cat.</s>USER: What colour? ASSISTANT:"
    )


def test_registry_hands_out_copies():
    conv = conv_templates["vicuna_v1"]
    conv.append_message("USER", "hi")
    assert conv_templates["vicuna_v1"].messages == []
    assert get_conv_template("vicuna_v1").messages == []
    few_shot = get_conv_template("v0")
    few_shot.messages[0][1] = "changed"
    assert get_conv_template("v0").messages[0][1].startswith("What are the key differences")


def test_unknown_template_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown conversation template 'mpt'; known templates: .*vicuna_v1"):
        get_conv_template("mpt")
    with pytest.raises(KeyError, match="vicuna_v1"):
        conv_templates["mpt"]


def test_stop_strings():
    assert get_conv_template("vicuna_v1").stop_str == "</s>"
    assert get_conv_template("share4v_v0").stop_str == "###"
    assert get_conv_template("llama_2").stop_str == "<s>"
    assert get_conv_template("plain").sep_style is SeparatorStyle.PLAIN


@pytest.mark.parametrize(
    ("mode", "expected_size"), [("Pad", (400, 400)), ("Resize", (336, 336)), ("Default", (800, 400))]
)
def test_get_images_modes(mode, expected_size):
    conv = get_conv_template("vicuna_v1")
    conv.append_message("USER", ("<image>\nhi", Image.new("RGB", (1000, 500), "red"), mode))
    conv.append_message("ASSISTANT", None)
    [image] = conv.get_images(return_pil=True)
    assert image.size == expected_size
    [encoded] = conv.get_images()
    assert isinstance(encoded, str) and len(encoded) > 100
    with pytest.raises(ValueError, match="invalid image process mode"):
        conv.messages[0][1] = ("hi", Image.new("RGB", (10, 10)), "Stretch")
        conv.get_images()


def test_gradio_rows():
    conv = get_conv_template("vicuna_v1")
    conv.append_message("USER", ("<image>\nhi", Image.new("RGB", (30, 20)), "Default"))
    conv.append_message("ASSISTANT", "hello")
    rows = conv.to_gradio_chatbot()
    assert rows[0][0].startswith('<img src="data:image/png;base64,') and rows[0][0].endswith("hi")
    assert rows[0][1] == "hello"
