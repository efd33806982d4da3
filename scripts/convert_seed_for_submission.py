"""Answer file (JSON lines) → SEED-Bench accuracy per question type, and the upload (see share4v.eval.submission)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from share4v.eval.submission import seed_main

if __name__ == "__main__":
    sys.exit(seed_main())
