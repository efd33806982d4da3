"""eval/model_vqa.py: answers to a JSON-lines question file with long free-form answers (LLaVA-Bench-in-the-Wild,
MM-Vet), as the original's sequential driver: same question and answer lines as `model_vqa_loader`, up to 1024 new
tokens by default. Batching, resume, chunking and bad-input handling are the shared answer loop's.

    python -m share4v.eval.model_vqa --model-path checkpoints/share4v-7b \
        --question-file playground/data/eval/llava-bench-in-the-wild/questions.jsonl \
        --image-folder playground/data/eval/llava-bench-in-the-wild/images \
        --answers-file answers/llava-bench/share4v-7b.jsonl --temperature 0 --conv-mode share4v_v1
"""

from __future__ import annotations

import sys

from share4v.eval import model_vqa_loader


def main(argv: list[str] | None = None) -> int:
    parser = model_vqa_loader.build_parser()
    parser.description = __doc__.split("\n\n")[0]
    parser.set_defaults(max_new_tokens=1024)
    return model_vqa_loader.main(argv, parser)


if __name__ == "__main__":
    sys.exit(main())
