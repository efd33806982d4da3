import base64
import http.server
import io
import socket
import threading
import time

import numpy as np
import pytest
import sentencepiece
import torch
from PIL import Image

from share4v.constants import IMAGE_TOKEN_INDEX
from share4v.mm_utils import (
    ImageLoadError,
    KeywordsStoppingCriteria,
    expand2square,
    get_model_name_from_path,
    load_image,
    load_image_from_base64,
    process_images,
    to_rgb,
    tokenizer_image_token,
)
from tests.helpers import random_image


def _png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


# ---- image loading -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("RGBA", (9, 7), (10, 20, 30, 0)),
        lambda: Image.new("LA", (9, 7), (100, 50)),
        lambda: Image.new("L", (9, 7), 77),
        lambda: Image.new("1", (9, 7), 1),
        lambda: Image.new("P", (9, 7), 3),
        lambda: Image.new("CMYK", (9, 7), (0, 255, 255, 0)),
        lambda: Image.fromarray(np.full((7, 9), 65535, dtype=np.uint16)),
        lambda: Image.fromarray(np.full((7, 9), 0.5, dtype=np.float32)),
    ],
    ids=["RGBA", "LA", "L", "1", "P", "CMYK", "I;16", "F"],
)
def test_any_mode_becomes_rgb(tmp_path, make):
    source = make()
    path = tmp_path / "img.tiff" if source.mode in ("F", "CMYK") else tmp_path / "img.png"
    source.save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (9, 7)


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    array = np.array([[0, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "deep.png")
    assert np.asarray(load_image(tmp_path / "deep.png"))[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_red(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "red.jpg")
    r, g, b = load_image(tmp_path / "red.jpg").getpixel((1, 1))
    assert r > 200 and g < 60 and b < 60


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match=r"^image file not found: .*nope\.png$"):
        load_image(tmp_path / "nope.png")
    deep = tmp_path.joinpath(*[f"folder{index:02d}" for index in range(20)], "the_missing_image.png")
    with pytest.raises(
        ImageLoadError, match=r"^image file not found: .{40}\.\.\..*the_missing_image\.png \(\d+ chars\)$"
    ):
        load_image(deep)  # a long path is shortened in the middle: the file name stays


def test_truncated_file(tmp_path):
    data = _png_bytes(random_image(0), "JPEG")
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"cannot read image file .*cut\.jpg"):
        load_image(tmp_path / "cut.jpg")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(ImageLoadError, match=r"cannot read image file .*notes\.png") as info:
        load_image(tmp_path / "notes.png")
    assert "\n" not in str(info.value)


def test_base64_and_data_uri():
    image = random_image(1, (12, 8))
    encoded = base64.b64encode(_png_bytes(image)).decode()
    assert np.array_equal(np.asarray(load_image_from_base64(encoded)), np.asarray(image))
    assert np.array_equal(np.asarray(load_image("data:image/png;base64," + encoded)), np.asarray(image))
    with pytest.raises(ImageLoadError, match="invalid base64 image data"):
        load_image("data:image/png;base64,@@@")
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))  # MIME-style line breaks
    assert np.array_equal(np.asarray(load_image_from_base64(wrapped)), np.asarray(image))
    with pytest.raises(ImageLoadError, match="data URI without a comma"):
        load_image("data:image/png;base64")
    with pytest.raises(ImageLoadError, match=r"image file not found: iVBOR.*\(\d+ chars\)$"):
        load_image(encoded)  # raw base64 is not a path: the message stays short


@pytest.fixture
def image_server(monkeypatch):
    """A local HTTP server (loopback, so private addresses are allowed for these tests)."""
    monkeypatch.setenv("SHARE4V_ALLOW_PRIVATE_URLS", "1")
    payload = _png_bytes(random_image(2, (10, 6)))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/ok.png":
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            elif self.path == "/drip.png":  # a byte every 0.3 s, forever
                self.send_response(200)
                self.end_headers()
                try:
                    for _ in range(1000):
                        self.wfile.write(b"\x89")
                        self.wfile.flush()
                        time.sleep(0.3)
                except OSError:
                    pass
            elif self.path == "/huge.png":  # no Content-Length, 4 MB streamed
                self.send_response(200)
                self.end_headers()
                try:
                    for _ in range(64):
                        self.wfile.write(b"\0" * 65536)
                except OSError:
                    pass
            elif self.path == "/redirect.png":
                self.send_response(302)
                self.send_header("Location", "/ok.png")
                self.end_headers()
            else:
                self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_ok_and_failures(image_server):
    assert load_image(image_server + "/ok.png").size == (10, 6)
    with pytest.raises(ImageLoadError, match=r"cannot download image http://127\.0\.0\.1:\d+/missing\.png: HTTPError"):
        load_image(image_server + "/missing.png")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(ImageLoadError, match=rf"cannot download image http://127\.0\.0\.1:{closed_port}/x\.png"):
        load_image(f"http://127.0.0.1:{closed_port}/x.png")


def test_url_deadline_size_cap_and_redirects(image_server, monkeypatch):
    assert load_image(image_server + "/redirect.png").size == (10, 6)
    monkeypatch.setenv("SHARE4V_URL_DEADLINE_S", "1.5")
    started = time.monotonic()
    with pytest.raises(ImageLoadError, match=r"drip\.png took over 1\.5 s; gave up"):
        load_image(image_server + "/drip.png")
    assert time.monotonic() - started < 5
    monkeypatch.setenv("SHARE4V_URL_MAX_BYTES", str(2**20))
    with pytest.raises(ImageLoadError, match=r"huge\.png is over the 1048576-byte limit"):
        load_image(image_server + "/huge.png")


def test_private_addresses_and_other_schemes_are_refused(image_server, monkeypatch):
    monkeypatch.delenv("SHARE4V_ALLOW_PRIVATE_URLS")
    with pytest.raises(ImageLoadError, match=r"private or local address \(127\.0\.0\.1\); set SHARE4V_ALLOW_PRIV"):
        load_image(image_server + "/ok.png")
    for url in ("http://localhost/x.png", "http://[::1]/x.png", "http://10.1.2.3/x.png", "http://169.254.169.254/x"):
        with pytest.raises(ImageLoadError, match="private or local address"):
            load_image(url)
    with pytest.raises(ImageLoadError, match="unsupported URL scheme 'file'"):
        load_image("file:///etc/passwd")
    with pytest.raises(ImageLoadError, match="unsupported URL scheme 'ftp'"):
        load_image("ftp://example.com/x.png")


# ---- pre-processing ------------------------------------------------------------------------------------------


def test_expand2square_centres_the_image():
    image = Image.new("RGB", (6, 2), (255, 0, 0))
    square = expand2square(image, (1, 2, 3))
    assert square.size == (6, 6)
    assert square.getpixel((0, 0)) == (1, 2, 3) and square.getpixel((0, 2)) == (255, 0, 0)
    assert square.getpixel((5, 3)) == (255, 0, 0) and square.getpixel((5, 4)) == (1, 2, 3)
    tall = expand2square(Image.new("RGB", (3, 8), (0, 255, 0)), (9, 9, 9))
    assert tall.size == (8, 8) and tall.getpixel((1, 0)) == (9, 9, 9) and tall.getpixel((2, 0)) == (0, 255, 0)


def test_process_images_pad_vs_square(tiny):
    _, model, processor, _ = tiny
    image = Image.new("RGB", (112, 56), (255, 255, 255))
    padded = process_images([image], processor, model.config)  # checkpoint says "pad"
    cropped = process_images([image], processor, None, image_aspect_ratio="square")
    assert padded.shape == cropped.shape == (1, 3, 56, 56)
    mean = torch.tensor(processor.image_mean).view(3, 1)
    std = torch.tensor(processor.image_std).view(3, 1)
    background = (torch.tensor([int(m * 255) for m in processor.image_mean]).view(3, 1) / 255 - mean) / std
    white = (1 - mean) / std
    assert torch.allclose(padded[0, :, 0, :], background.expand(3, 56), atol=1e-3)  # top rows are the pad colour
    assert torch.allclose(padded[0, :, 28, :], white.expand(3, 56), atol=1e-3)
    assert torch.allclose(cropped[0, :, 0, :], white.expand(3, 56), atol=1e-3)  # crop keeps only the image


def test_process_images_batches(tiny):
    _, model, processor, _ = tiny
    batch = process_images([random_image(3), random_image(4, (30, 90))], processor, model.config)
    assert batch.shape == (2, 3, 56, 56)


# ---- tokenization --------------------------------------------------------------------------------------------


def test_tokenizer_image_token(tiny_ckpt, tiny):
    tokenizer = tiny[0]
    ids = tokenizer_image_token("USER: <image>\nWhat? ASSISTANT:", tokenizer)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tiny_ckpt / "tokenizer.model"))
    # Golden ids from sentencepiece itself: BOS, each chunk encoded on its own (with its dummy-prefix "▁").
    assert ids == [1, *sp.encode("USER: "), IMAGE_TOKEN_INDEX, *sp.encode("\nWhat? ASSISTANT:")]
    assert sp.id_to_piece(ids[ids.index(IMAGE_TOKEN_INDEX) + 1]) == "▁"
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    two = tokenizer_image_token("<image><image>\nhi", tokenizer, return_tensors="pt")
    assert two.dtype == torch.long and two.tolist()[:3] == [
        tokenizer.bos_token_id,
        IMAGE_TOKEN_INDEX,
        IMAGE_TOKEN_INDEX,
    ]
    with pytest.raises(ValueError, match="unsupported tensor type"):
        tokenizer_image_token("hi", tokenizer, return_tensors="np")


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("Lin-Chen/ShareGPT4V-7B", "ShareGPT4V-7B"),
        ("/ckpt/share4v-7b_pretrained_pt-1.2m/", "share4v-7b"),
        ("runs/share4v-13b/checkpoint-500", "share4v-13b_checkpoint-500"),
    ],
)
def test_get_model_name_from_path(path, name):
    assert get_model_name_from_path(path) == name


def test_keywords_stopping_is_per_row(tiny):
    tokenizer = tiny[0]
    stop = tokenizer("###").input_ids[1:]
    plain = tokenizer("the sky is blue and the sun is bright today").input_ids[1:]
    criteria = KeywordsStoppingCriteria(["###"], tokenizer, start_len=3)
    outputs = torch.tensor([[1, 5, 6, *plain, *stop], [1, 7, 8, *stop, *plain]])
    assert criteria(outputs, None).tolist() == [True, False]


@pytest.mark.parametrize("with_prompt", [True, False])
def test_keywords_stopping_judges_only_generated_tokens(tiny, with_prompt):
    """As generate calls it, step by step, whether or not its running sequence holds the prompt."""
    tokenizer = tiny[0]
    prompt = tokenizer("Human: hi###Assistant:").input_ids  # the prompt itself holds the keyword
    generated = tokenizer("fine, thanks###Human").input_ids[1:]
    start = prompt if with_prompt else []
    criteria = KeywordsStoppingCriteria(["###"], tokenizer, torch.tensor([prompt]))
    flags = [criteria(torch.tensor([start + generated[:n]]), None).item() for n in range(1, len(generated) + 1)]
    stop_at = len(tokenizer("fine, thanks###").input_ids) - 1
    assert flags[: stop_at - 1] == [False] * (stop_at - 1) and flags[stop_at - 1]


# ---- hardening: orientation, transparency, degenerate shapes -------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    """A portrait photo stored landscape with Orientation=6 (rotate 90° clockwise) reaches the model upright."""
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 20))  # red on the stored image's left
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    upright = load_image(tmp_path / "portrait.jpg")
    assert upright.size == (20, 40)
    assert upright.getpixel((10, 3))[0] > 200  # the red strip is now on top
    assert load_image(Image.open(tmp_path / "portrait.jpg")).size == (20, 40)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_become_white(mode):
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((0, 0), (0, 0, 255, 255))
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
        image.info["transparency"] = image.getpixel((3, 3))
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.getpixel((3, 3)) == (255, 255, 255)
    assert rgb.getpixel((0, 0)) != (255, 255, 255)


def test_degenerate_images_are_refused_quickly(tiny):
    _, model, processor, _ = tiny
    with pytest.raises(ImageLoadError, match="more than 100 times longer than wide"):
        process_images([Image.new("RGB", (30000, 1))], processor, model.config)
    with pytest.raises(ImageLoadError, match="size 0x0 has no pixels"):
        process_images([Image.new("RGB", (0, 0))], processor, model.config)
    wide = Image.new("RGB", (9000, 100), (255, 255, 255))  # padded canvas bounded: shrunk to 8192 first
    started = time.monotonic()
    assert process_images([wide], processor, model.config).shape == (1, 3, 56, 56)
    assert time.monotonic() - started < 10


def test_unknown_aspect_ratio_is_an_error(tiny):
    _, _, processor, _ = tiny
    with pytest.raises(ValueError, match="unknown image_aspect_ratio 'bogus'"):
        process_images([random_image(0)], processor, None, image_aspect_ratio="bogus")
