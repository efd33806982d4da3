"""Answer file (JSON lines) → the VQAv2 EvalAI upload over every test2015 question (see share4v.eval.submission)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from share4v.eval.submission import vqav2_main

if __name__ == "__main__":
    sys.exit(vqav2_main())
