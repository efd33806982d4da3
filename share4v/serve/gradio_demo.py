"""serve/gradio_demo.py

The original ShareGPT4V web demo (image upload, multi-turn chat, streamed answers, sampling sliders, examples,
regenerate, clear, stop) as a gradio Blocks app over one in-process `Share4VEngine`; `tools/app.py` launches it.

    python tools/app.py --model-path checkpoints/share4v-tiny

The chat logic is plain functions over a `DemoState` (what the model sees: turns and the image), testable without
gradio or a browser: `add_text` (the original's truncation; a new image starts a new chat), `regenerate` (drops the
last answer), `stream_answer` (the engine streams, errors become a notice in the chat), `chat_messages` (what the
chat shows). Prompts are rendered only by the engine, from `DemoState.chat()`. Uploads are read here, not by gradio,
so a file that is not an image, too big or truncated becomes a message in the chat instead of a failed event.
gradio itself is imported only by `build_demo` and `launch` (install it with `pip install -e ".[demo]"`).
"""

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from share4v.constants import DEFAULT_IMAGE_TOKEN
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.mm_utils import check_image_size, load_image
from share4v.serve.openai_messages import ImagePolicy

logger = logging.getLogger(__name__)

TEXT_LIMIT = 1536  # characters kept of a message (the original demo's hard cut-off) ...
TEXT_LIMIT_WITH_IMAGE = 1200  # ... and of a message sent with an image
MAX_NEW_TOKENS_LIMIT = 1024  # the top of the "Max output tokens" slider (the original's worker cap)
CURSOR = "▌"  # shown after a partial answer while it streams
CLEAR_WAIT_S = 30.0  # Clear stops a running answer and waits this long at most for its last update
DEMO_DEFAULTS = GenerationParams(top_p=0.7, max_new_tokens=512)  # the original's sliders; temperature: the engine's
EXAMPLE_QUESTIONS = {  # files of the repository's examples/ folder and a question about each
    "miniature_0.png": "Describe the image in detail.",  # the shipped miniature model's world
    "miniature_1.png": "How many shapes are there?",
    "sunset.png": "What is in the picture?",
    "shapes.png": "Describe the image in detail.",
    "chart.png": "What does this chart show?",
}


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 20 * 2**20  # an uploaded file's size (gradio also refuses larger uploads outright)
    max_pixels: int = ImagePolicy.max_pixels  # width x height, checked from the header before decoding


class UploadError(ValueError):
    """An uploaded file that is not an image the demo accepts; the message is shown in the chat."""


@dataclass
class DemoState:
    """One browser session's chat. Functions below return a new state and never change the one they get."""

    turns: list[str] = field(default_factory=list)  # user, assistant, user, ...: odd length while awaiting an answer
    image: Image.Image | None = None  # what the chat is about, given with the first user turn
    image_path: str | None = None  # its uploaded file, shown in the chat
    notice: str | None = None  # one line after the chat (a refused upload, a failed answer); never sent to the model

    @property
    def awaiting_answer(self) -> bool:
        return len(self.turns) % 2 == 1

    def chat(self) -> Chat:
        """The engine's chat: its template puts the image in front of the first user text, as the original."""
        return Chat(list(self.turns), [self.image] if self.image is not None else [])


def add_text(state: DemoState, text: str, image: Image.Image | None = None, image_path: str | None = None) -> DemoState:
    """The state once the user sends `text` and maybe a new (already loaded) `image`.

    As the original demo: the text is cut to 1536 characters (1200 with an image) and a new image starts a new
    chat. `<image>` typed by the user is removed (images are placed by the engine, in front of the first text). An
    empty message without an image, or one sent while an answer is still being written, changes nothing but the
    notice.
    """
    text = text.replace(DEFAULT_IMAGE_TOKEN, "")[:TEXT_LIMIT]
    if state.awaiting_answer:
        return dataclasses.replace(state, notice="an answer is still being written: wait for it or press Stop")
    if image is not None:
        return DemoState([text[:TEXT_LIMIT_WITH_IMAGE]], image, image_path)
    if not text.strip():
        return dataclasses.replace(state, notice=None)
    return dataclasses.replace(state, turns=[*state.turns, text], notice=None)


def regenerate(state: DemoState) -> DemoState:
    """The state with its last answer dropped, so that the question is answered again."""
    turns = state.turns[:-1] if state.turns and not state.awaiting_answer else state.turns
    return dataclasses.replace(state, turns=list(turns), notice=None)


def slider_params(temperature: float, top_p: float, max_new_tokens: float) -> GenerationParams:
    """The engine's settings from the sliders; the original caps new tokens at 1024."""
    return GenerationParams(
        temperature=float(temperature),
        top_p=float(top_p),
        max_new_tokens=min(round(max_new_tokens), MAX_NEW_TOKENS_LIMIT),
    )


def stream_answer(
    engine: Share4VEngine, state: DemoState, params: GenerationParams, stop: threading.Event | None = None
) -> Iterator[tuple[DemoState, str | None]]:
    """Answer the pending question: `(state, partial answer)` while it streams, then `(state with the answer, None)`.

    A set `stop` ends generation and keeps what was written so far as the answer. A chat the engine cannot answer
    (an image it refuses, a chat past the context, out of memory) ends with the question withdrawn and the error as
    the state's notice; nothing is raised.
    """
    if not state.awaiting_answer:
        yield state, None
        return
    pieces: list[str] = []
    try:
        with contextlib.closing(engine.stream(state.chat(), params)) as stream:  # closing it stops generation
            for piece in stream:
                pieces.append(piece)
                yield state, "".join(pieces)
                if stop is not None and stop.is_set():
                    break
    except Exception as err:  # any failure of this one answer is shown in the chat; the demo goes on
        logger.warning("answer failed: %s: %s", type(err).__name__, err)
        yield withdrawn(state, err), None
        return
    yield dataclasses.replace(state, turns=[*state.turns, "".join(pieces)], notice=None), None


def withdrawn(state: DemoState, error: Exception) -> DemoState:
    """The state with its unanswered question taken back and `error` as the notice."""
    turns = state.turns[:-1] if state.awaiting_answer else state.turns
    return dataclasses.replace(state, turns=list(turns), notice=f"error: {error}")


def chat_messages(state: DemoState, partial: str | None = None) -> list[dict[str, Any]]:
    """What the Chatbot shows: the image, the turns, a streaming answer with a cursor, the notice (messages format).

    Text goes in as `{"type": "text"}` parts so that gradio shows it as written (plain strings get dedented).
    """
    messages: list[dict[str, Any]] = []
    if state.image_path is not None and state.turns:
        messages.append({"role": "user", "content": {"path": state.image_path}})
    for index, turn in enumerate(state.turns):
        if index % 2 == 0 and not turn.strip():
            continue  # an image sent without text
        messages.append(_text_message("user" if index % 2 == 0 else "assistant", turn))
    if partial is not None:
        messages.append(_text_message("assistant", partial + CURSOR))
    if state.notice:
        messages.append(_text_message("assistant", f"⚠️ {state.notice}"))
    return messages


def _text_message(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": {"type": "text", "text": text}}


def load_upload(upload: Any, limits: UploadLimits = UploadLimits()) -> tuple[Image.Image, str] | None:
    """The image of an image box's unprocessed value (a gradio FileData dict or a path) and its path; None if empty.

    Raises:
        UploadError: one line naming the file: over `limits` (size, or pixels from the header), not an image,
            truncated or of degenerate shape.
    """
    if upload is None:
        return None
    path = upload.get("path") if isinstance(upload, dict) else upload
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise UploadError("the upload did not arrive; please upload the image again")
    name = (upload.get("orig_name") if isinstance(upload, dict) else None) or Path(path).name
    size = os.path.getsize(path)
    if size > limits.max_bytes:
        raise UploadError(f"{name} is {size:,} bytes, over the upload limit of {limits.max_bytes:,}")
    try:
        with Image.open(path) as header:
            width, height = header.size
            if width * height > limits.max_pixels:
                raise UploadError(f"{name} has {width}x{height} pixels, over the limit of {limits.max_pixels}")
            header.load()  # decode now: a truncated file fails here
            image = load_image(header)  # upright RGB
        check_image_size(image)
    except UploadError:
        raise
    except UnidentifiedImageError:
        raise UploadError(f"{name} is not an image (or not a format this demo reads)") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise UploadError(f"{name} could not be read: {err}") from None
    return image, str(path)


def example_rows(folder: str | os.PathLike) -> list[list[str]]:
    """`[image path, question]` rows for the gr.Examples table, for the files of `EXAMPLE_QUESTIONS` in `folder`."""
    return [
        [str(Path(folder) / name), question]
        for name, question in EXAMPLE_QUESTIONS.items()
        if (Path(folder) / name).is_file()
    ]


class _Generating:
    """The sessions now generating: a Stop click sets its session's flag; Clear also waits for the answer to end, so
    that its last update cannot land after the cleared chat."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[threading.Event, threading.Event]] = {}  # session -> (stop, done)

    @contextlib.contextmanager
    def running(self, session: str) -> Iterator[threading.Event]:
        stop, done = threading.Event(), threading.Event()
        with self._lock:
            self._runs[session] = (stop, done)
        try:
            yield stop
        finally:
            with self._lock:
                if self._runs.get(session, (None,))[0] is stop:
                    del self._runs[session]
            done.set()

    def stop(self, session: str, wait_s: float = 0.0) -> None:
        with self._lock:
            stop, done = self._runs.get(session, (None, None))
        if stop is not None:
            stop.set()
            done.wait(wait_s)


_HEADER = """# ShareGPT4V
Chat about an image with **{model}**, running in this process. Upload an image (or pick an example), ask, and press
Send. A new image starts a new chat."""
_FOOTER = """**Use.** A research demo: answers can be wrong, biased or offensive, and nothing here is moderated. Do not
upload images you may not share. The weights' own license applies (the released ShareGPT4V models build on Llama 2
and were tuned on CC BY-NC 4.0 data: non-commercial use).

**Credits.** ShareGPT4V (Chen et al., 2023) and LLaVA-1.5 (Liu et al., 2023), re-implemented by share4v."""


def build_demo(
    engine: Share4VEngine,
    model_name: str = "share4v",
    *,
    limits: UploadLimits = UploadLimits(),
    defaults: GenerationParams = DEMO_DEFAULTS,
    examples: Sequence[Sequence[str]] = (),
    concurrency: int = 1,
) -> Any:
    """The gradio Blocks app (the original demo's layout) answering with `engine`.

    Args:
        engine: the loaded model; every session shares it.
        model_name: shown in the title and above the chat.
        limits: what an upload may be (bigger ones get a message in the chat).
        defaults: the sliders' starting values (temperature, top_p, max_new_tokens).
        examples: `[image path, question]` rows (see `example_rows`).
        concurrency: answers generated at once; later ones wait in the queue.

    Returns:
        a `gradio.Blocks`; start it with `launch`. API names: /send, /answer, /regenerate, /clear, /stop.
    """
    import gradio as gr

    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    generating = _Generating()

    def on_send(state: DemoState, text: str, upload: Any):
        try:
            loaded = load_upload(upload, limits)
        except UploadError as err:  # keep the text, drop the bad file
            state = dataclasses.replace(state, notice=f"upload refused: {err}")
            return state, chat_messages(state), text, None
        state = add_text(state, text or "", *(loaded or (None, None)))
        if state.awaiting_answer and not state.notice:  # sent: empty the boxes, as the original
            return state, chat_messages(state), "", None
        return state, chat_messages(state), text, loaded[1] if loaded else None

    def on_answer(state: DemoState, temperature: float, top_p: float, max_tokens: float, request: gr.Request):
        try:
            params = slider_params(temperature, top_p, max_tokens)
        except ValueError as err:  # only API callers get here: the sliders' ranges hold valid values
            state = withdrawn(state, err)
            yield state, chat_messages(state)
            return
        with generating.running(request.session_hash or "") as stop:
            for answered, partial in stream_answer(engine, state, params, stop):
                yield answered, chat_messages(answered, partial)

    def on_regenerate(state: DemoState):
        state = regenerate(state)
        return state, chat_messages(state)

    def on_clear(request: gr.Request):
        generating.stop(request.session_hash or "", wait_s=CLEAR_WAIT_S)
        return DemoState(), [], "", None

    def on_stop(request: gr.Request):
        generating.stop(request.session_hash or "")

    with gr.Blocks(title="ShareGPT4V", analytics_enabled=False) as demo:
        state = gr.State(DemoState())
        gr.Markdown(_HEADER.format(model=model_name))
        with gr.Row():
            with gr.Column(scale=3):
                gr.Dropdown([model_name], value=model_name, label="Model ID", interactive=False)
                imagebox = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"])
                textbox = gr.Textbox(
                    label="Question", show_label=False, placeholder="Enter text and press ENTER", render=False
                )
                if examples:
                    gr.Examples([list(row) for row in examples], inputs=[imagebox, textbox], label="Examples")
                with gr.Accordion("Parameters", open=False):
                    temperature = gr.Slider(0.0, 1.0, value=defaults.temperature, step=0.1, label="Temperature")
                    top_p = gr.Slider(0.1, 1.0, value=defaults.top_p or 1.0, step=0.1, label="Top P")
                    max_tokens = gr.Slider(64, MAX_NEW_TOKENS_LIMIT, value=defaults.max_new_tokens, step=64,
                                           label="Max output tokens")  # fmt: skip
            with gr.Column(scale=7):
                chatbot = gr.Chatbot(
                    label=model_name, height=550, elem_id="chatbot", feedback_options=None, buttons=["copy", "copy_all"]
                )
                with gr.Row():
                    textbox.render()
                    send_btn = gr.Button("Send", variant="primary", scale=0, min_width=100)
                with gr.Row():
                    regenerate_btn = gr.Button("🔄 Regenerate")
                    clear_btn = gr.Button("🗑️ Clear")
                    stop_btn = gr.Button("⏹️ Stop", variant="stop")
        gr.Markdown(_FOOTER)

        answer = {"fn": on_answer, "inputs": [state, temperature, top_p, max_tokens], "outputs": [state, chatbot],
                  "concurrency_limit": concurrency, "concurrency_id": "generate"}  # fmt: skip
        gr.on(
            [send_btn.click, textbox.submit],
            on_send,
            [state, textbox, imagebox],
            [state, chatbot, textbox, imagebox],
            preprocess=False,  # the upload reaches load_upload unread: a bad file becomes a message, not an error
            api_name="send",
        ).then(**answer, api_name="answer")
        regenerate_btn.click(on_regenerate, [state], [state, chatbot], api_name="regenerate").then(
            **answer, api_visibility="private"
        )
        clear_btn.click(on_clear, None, [state, chatbot, textbox, imagebox], api_name="clear")
        chatbot.clear(on_clear, None, [state, chatbot, textbox, imagebox], api_visibility="private")  # its own icon
        stop_btn.click(on_stop, None, None, queue=False, api_name="stop")
    return demo


def launch(
    demo: Any,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    limits: UploadLimits = UploadLimits(),
    allowed_paths: Sequence[str | os.PathLike] = (),
    block: bool = True,
) -> str:
    """Start `demo` (queued, as the original); returns its local URL. `block=False` returns once it listens."""
    demo.queue()
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=limits.max_bytes,
        allowed_paths=[str(path) for path in allowed_paths],
        prevent_thread_lock=not block,
        ssr_mode=False,
        quiet=not block,
    )
    return demo.local_url
