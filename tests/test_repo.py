"""Repository hygiene: ruff is clean, CI runs exactly the README's commands."""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    ruff = shutil.which("ruff")
    if ruff is None and importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (it comes with the [dev] extra)")
    command = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    result = subprocess.run(
        [*command, "check", "share4v", "tests", "scripts", "benchmarks", "tools"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [block.strip() for block in blocks[:3]]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["install", "run", "test"])
def test_ci_runs_the_readme_commands(index):
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[index] in ci_lines


def test_readme_python_example_runs(capsys):
    """The README's API example, on the shipped miniature model it names."""
    [example] = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    example = example.replace("examples/", str(ROOT / "examples") + "/")
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["answer"] and len(namespace["answers"]) == 2
    assert namespace["answer"] in capsys.readouterr().out
