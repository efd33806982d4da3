"""Small helpers shared by tests."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM


@contextlib.contextmanager
def umask(mask: int):
    """Run the block with the process umask set to `mask` (restored afterwards)."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def folder_modes(root: Path) -> set[int]:
    """The permission bits of `root` and of every folder under it."""
    return {stat.S_IMODE(path.stat().st_mode) for path in [root, *root.rglob("*")] if path.is_dir()}


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def file_modes(root: Path, pattern: str = "*") -> set[int]:
    """The permission bits of every file under `root` whose name matches `pattern`."""
    return {file_mode(path) for path in root.rglob(pattern) if path.is_file()}


def random_image(seed: int, size: tuple[int, int] = (70, 40)) -> Image.Image:
    """A reproducible noise image of `size` (width, height)."""
    pixels = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# what older Triton interpreters raise under NumPy 2.4 at a loop bound or index taken from a kernel argument
INTERPRETER_UNDER_NUMPY_2_4 = "TypeError('only 0-dimensional arrays can be converted to Python scalars')"


def run_in_triton_interpreter(script: str, done_marker: str) -> None:
    """Run a Python `script` with Triton's interpreter (chosen when Triton is imported, hence a new process), so that
    Triton kernels run on the CPU; fails with the script's error unless it ran through and printed `done_marker`."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    numpy_2_4 = np.lib.NumpyVersion(np.__version__) >= "2.4.0"
    if done.returncode != 0 and numpy_2_4 and INTERPRETER_UNDER_NUMPY_2_4 in done.stderr:
        pytest.skip("this Triton's interpreter turns its scalar arguments into numbers in a way NumPy >= 2.4 refuses "
                    "(triton-lang/triton#9171; newer Triton runs it)")  # fmt: skip
    assert done.returncode == 0 and done_marker in done.stdout, done.stderr[-3000:]


def plain_llama_like(model) -> LlamaForCausalLM:
    """A transformers Llama with the language weights of a share4v model (no projector, no tower)."""
    cfg = model.config
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads,
            rms_norm_eps=cfg.rms_norm_eps,
            max_position_embeddings=cfg.max_position_embeddings,
        )
    )
    state = {k: v for k, v in model.state_dict().items() if "mm_projector" not in k and "vision_tower" not in k}
    llama.load_state_dict(state, strict=True)
    return llama
