"""eval/model_vqa_science.py: answers to ScienceQA questions in LLaVA's conversation format.

    python -m share4v.eval.model_vqa_science --model-path checkpoints/share4v-7b \
        --question-file playground/data/eval/scienceqa/share4v_test_CQM-A.json \
        --image-folder playground/data/eval/scienceqa/images/test \
        --answers-file answers/scienceqa/share4v-7b.jsonl --single-pred-prompt --temperature 0 --conv-mode vicuna_v1

The question file is a JSON list of `{"id", "image"?, "conversations": [{"from": "human", "value"}, ...]}`; the
question is the first human value without its `<image>` marker. A question without `image` is asked as text only.
`--single-pred-prompt` adds the instruction to answer with the option's letter. `--answer-prompter` (for models
trained to reason first) asks again after the answer, with `" ###\\nANSWER:"` after it, for up to 64 more tokens,
and writes `reasoning + "\\n The answer is " + that`.

Answer lines: `{"question_id": id, "prompt", "text", "answer_id", "model_id", "metadata"}`, where `prompt` is
`"<image>\\n" + question` for questions with an image (and the instruction, when asked); score them with
`python -m share4v.eval.eval_science_qa`. Resume, chunking, batching and bad input as in the shared answer loop.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from share4v.constants import DEFAULT_IMAGE_TOKEN
from share4v.eval.answer_loop import Question, add_loop_args, run_driver
from share4v.eval.jsonl import read_json_list
from share4v.inference.cli_args import add_generation_args, add_model_args
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.inference.requests import Completion, Request, RequestEncoder
from share4v.mm_utils import tokenizer_image_token

PROMPT_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
ANSWER_PROMPT, ANSWER_MAX_NEW_TOKENS, ANSWER_JOIN = " ###\nANSWER:", 64, "\n The answer is "


def read_questions(
    question_file: str | Path, image_folder: str | Path | None, single_pred_prompt: bool = False, strict: bool = False
) -> tuple[list[Question], list[dict]]:
    """(questions, problems): an unusable entry becomes a problem (`{"entry", "id", "error"}`) unless `strict`.

    Raises:
        FileNotFoundError / ValueError: no such file, not a JSON list, or (with `strict`) a bad entry.
    """
    path = Path(question_file)
    entries = read_json_list(path, "questions")
    questions, problems = [], []
    for position, entry in enumerate(entries):
        try:
            questions.append(_question(entry, image_folder, single_pred_prompt))
        except ValueError as err:
            if strict:
                raise ValueError(f"{path}[{position}]: {err} (--strict)") from None
            entry_id = entry.get("id") if isinstance(entry, dict) else None
            problems.append({"entry": position, "id": entry_id, "error": str(err)})
    return questions, problems


def _question(entry: Any, image_folder: str | Path | None, single_pred_prompt: bool) -> Question:
    if not isinstance(entry, dict) or "id" not in entry:
        raise ValueError("not an object with an id")
    turns = entry.get("conversations")
    human = next((t for t in turns if isinstance(t, dict) and t.get("from") == "human"), None) if turns else None
    if not isinstance(turns, list) or human is None or not isinstance(human.get("value"), str):
        raise ValueError(f"question {entry['id']!r}: no human turn with a text value in conversations")
    if not isinstance(entry.get("image") or "", str):
        raise ValueError(f"question {entry['id']!r}: image must be a file name, not {type(entry['image']).__name__}")
    text = human["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
    if entry.get("image"):
        text = DEFAULT_IMAGE_TOKEN + "\n" + text
    text += PROMPT_SUFFIX if single_pred_prompt else ""
    images = (str(Path(image_folder or ".") / entry["image"]),) if entry.get("image") else ()
    return Question(entry["id"], text, images)


@dataclass
class _PromptedRequest(Request):
    prompt_text: str = ""  # the filled template, for the answer prompter's second pass


@dataclass
class _PromptKeepingEncoder:
    """The engine's encoder, keeping each request's prompt text (picklable, for the DataLoader workers)."""

    inner: RequestEncoder

    def encode(self, chat: Chat) -> Request:
        request = self.inner.encode(chat)
        if request.error is not None:
            return request
        prompt_text = self.inner.conversation(list(chat.turns), len(chat.images)).get_prompt()
        return _PromptedRequest(**vars(request), prompt_text=prompt_text)


class AnswerPrompter:
    """The engine as the answer loop uses it (`encoder`, `collate`, `run`), plus the original's `--answer-prompter`:
    after each answer, the prompt + answer + `" ###\\nANSWER:"` is continued for up to 64 tokens and the text
    becomes `answer + "\\n The answer is " + continuation`. A row whose second prompt would not fit the context
    keeps its first answer."""

    def __init__(self, engine: Share4VEngine):
        self.engine = engine

    @property
    def conv_mode(self) -> str:
        return self.engine.conv_mode

    @property
    def encoder(self) -> _PromptKeepingEncoder:
        return _PromptKeepingEncoder(self.engine.encoder)

    def collate(self, requests: list[Request]) -> list[Request]:
        return list(requests)  # `run` batches both passes itself

    def run(self, requests: list[Request], params: GenerationParams) -> list[Completion]:
        first = self.engine.run(self.engine.collate(requests), params)
        encoder = self.engine.encoder
        followups = {}
        for row, (request, completion) in enumerate(zip(requests, first, strict=True)):
            ids = tokenizer_image_token(request.prompt_text + completion.text + ANSWER_PROMPT, encoder.tokenizer)
            prompt_tokens = len(ids) + request.num_images * (encoder.image_tokens - 1)
            if prompt_tokens < encoder.max_positions:
                followups[row] = replace(request, prompt_ids=ids, prompt_tokens=prompt_tokens)
        if not followups:
            return first
        second_params = replace(params, max_new_tokens=ANSWER_MAX_NEW_TOKENS)
        answers = self.engine.run(self.engine.collate(list(followups.values())), second_params)
        second = dict(zip(followups, answers, strict=True))
        return [
            replace(completion, text=completion.text + ANSWER_JOIN + second[row].text) if row in second else completion
            for row, completion in enumerate(first)
        ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_model_args(parser)
    add_generation_args(parser, max_new_tokens=1024)
    parser.set_defaults(conv_mode="share4v_v0")
    parser.add_argument("--question-file", required=True, help="JSON list: id, image (optional), conversations")
    parser.add_argument("--image-folder", default="", help="folder the question file's image paths are relative to")
    parser.add_argument("--answers-file", required=True, help="JSON lines written here (appended; reruns resume)")
    parser.add_argument("--single-pred-prompt", action="store_true", help="ask for the option's letter only")
    parser.add_argument("--answer-prompter", action="store_true", help='ask again after " ###\\nANSWER:"')
    add_loop_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    read = partial(read_questions, args.question_file, args.image_folder, args.single_pred_prompt, args.strict)
    return run_driver(args, read, {"question_file": args.question_file}, "questions",
                      wrap=AnswerPrompter if args.answer_prompter else None)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
