"""Imports run one way: constants → conversation/mm_utils/utils → model → inference → front ends, train → data."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "share4v"

# A module may import only modules of a lower or equal rank (equal: same layer, e.g. conversation → mm_utils).
RANKS = [
    ("share4v.constants", 0),
    ("share4v.image_fetch", 0),
    ("share4v.temp_paths", 0),  # standard library only
    ("share4v.utils", 1),
    ("share4v.appended_jsonl", 1),
    ("share4v.mm_utils", 1),
    ("share4v.conversation", 2),
    ("share4v.model.multimodal_projector", 3),
    ("share4v.model.weights_io", 3),
    ("share4v.model.causal_lm_loss", 3),
    ("share4v.model.packed_attention", 3),
    ("share4v.model.multimodal_encoder", 3),
    ("share4v.model.share4v_arch", 4),
    ("share4v.model.vision_setup", 4),
    ("share4v.model.language_model", 5),
    ("share4v.model.builder", 6),
    ("share4v.model", 6),
    ("share4v.inference", 7),
    ("share4v.eval.metrics", 1),  # pure scorers: standard library only (before "share4v.eval": first match wins)
    ("share4v.eval", 8),
    ("share4v.serve", 8),
    ("share4v.testing", 8),
    ("share4v.train", 8),
    ("share4v.convert", 8),
    ("share4v.data", 9),
    ("share4v", 10),
]


def rank(module: str) -> int:
    for prefix, value in RANKS:
        if module == prefix or module.startswith(prefix + "."):
            return value
    raise AssertionError(f"{module} has no layer: add it to RANKS")


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def share4v_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("share4v"):
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("share4v"))


@pytest.mark.parametrize(("name", "path"), list(modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_no_import_of_a_later_layer(name, path):
    if name == "share4v":
        return  # the package root re-exports the model
    for imported in share4v_imports(path):
        assert rank(imported) <= rank(name), f"{name} imports {imported}, a later layer"


def test_model_never_imports_prompting_or_front_ends():
    for name, path in modules():
        if name.startswith("share4v.model"):
            for imported in share4v_imports(path):
                assert not imported.startswith(("share4v.conversation", "share4v.inference", "share4v.eval")), name
