"""Answer file (JSON lines) → the MMBench upload .xlsx for the OpenCompass server (see share4v.eval.submission)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from share4v.eval.submission import mmbench_main

if __name__ == "__main__":
    sys.exit(mmbench_main())
