"""serve/cli.py

Interactive chat about an image in the terminal, answers streamed as they are generated.

    python -m share4v.serve.cli --model-path checkpoints/share4v-7b --image-file examples/sunset.png

At the prompt: type a message; `/image PATH` starts a new chat about another image, `/reset` clears the chat,
`/help` lists the commands, `/quit` (or end of input, Ctrl-D) leaves. An empty line does nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TextIO

from share4v.conversation import get_conv_template
from share4v.inference.cli_args import add_generation_args, add_model_args, engine_from_args, generation_params
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.mm_utils import ImageLoadError, load_image

COMMANDS = "commands: /image PATH (a new chat about another image), /reset, /help, /quit (or Ctrl-D)"
KNOWN_COMMANDS = ("/image", "/reset", "/help", "/quit")


class ChatSession:
    """Turn history and the current image for one terminal chat."""

    def __init__(self, engine: Share4VEngine, params: GenerationParams, out: TextIO):
        self.engine = engine
        self.params = params
        self.out = out
        self.roles = get_conv_template(engine.conv_mode).roles
        self.images: list = []
        self.turns: list[str] = []

    def set_image(self, source: str | None) -> None:
        self.images = [load_image(source)] if source else []
        self.turns = []

    def ask(self, message: str) -> str:
        """Stream the answer to `message` to `out` and keep both in the history."""
        self.out.write(f"{self.roles[1]}: ")
        self.out.flush()
        pieces = []
        for piece in self.engine.stream(Chat([*self.turns, message], self.images), self.params):
            pieces.append(piece)
            self.out.write(piece)
            self.out.flush()
        self.out.write("\n")
        answer = "".join(pieces)
        self.turns += [message, answer]
        return answer

    def handle(self, line: str) -> bool:
        """Act on one input line; False when the user wants to leave."""
        line = line.strip()
        if line == "/quit":
            return False
        if not line:
            return True
        if line == "/help":
            self.out.write(COMMANDS + "\n")
        elif line == "/reset":
            self.turns = []
            self.out.write("(chat cleared)\n")
        elif line.startswith("/image"):
            try:
                self.set_image(line.removeprefix("/image").strip() or None)
                self.out.write("(new chat about this image)\n")
            except ImageLoadError as err:
                self.out.write(f"error: {err}\n")
        elif line.startswith("/") and line.split()[0] not in KNOWN_COMMANDS:
            self.out.write(f"unknown command {line.split()[0]}; /help lists the commands\n")
        else:
            try:
                self.ask(line)
            except (ValueError, RuntimeError) as err:  # e.g. the chat outgrew the context, or out of memory
                self.out.write(f"\nerror: {err}\n")
        return True


def run(session: ChatSession, stdin: TextIO, interactive: bool) -> None:
    while True:
        if interactive:
            session.out.write(f"{session.roles[0]}: ")
            session.out.flush()
        line = stdin.readline()
        if not line or not session.handle(line):
            break


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m share4v.serve.cli",
        description="Chat with a share4v model about an image (streaming answers).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_args(parser)
    parser.add_argument("--image-file", default=None, help="image path/URL to talk about (optional)")
    add_generation_args(parser, max_new_tokens=512)
    return parser


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.num_beams != 1:
        sys.exit("error: the chat streams its answers, which needs --num_beams 1")
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        params = generation_params(args)  # bad settings fail before the model loads
        first_image = load_image(args.image_file) if args.image_file else None
        session = ChatSession(engine_from_args(args), params, stdout)
    except (ImageLoadError, FileNotFoundError, ImportError, ValueError) as err:
        sys.exit(f"error: {err}")
    session.images = [first_image] if first_image is not None else []
    name = args.model_name or args.model_path.rstrip("/").rsplit("/", 1)[-1]
    stdout.write(f"share4v chat with {name}; {COMMANDS}\n")
    run(session, stdin, interactive=stdin.isatty())


if __name__ == "__main__":
    main()
