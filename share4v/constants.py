"""constants.py

Token constants shared by prompt building, tokenization, the model's image/text merge and training labels.
Values are those of the original ShareGPT4V code, which released checkpoints and data files depend on.
Plus where the shipped miniature model lies (the default of every `--model-path`).
"""

from pathlib import Path

CONTROLLER_HEART_BEAT_EXPIRATION = 30
WORKER_HEART_BEAT_INTERVAL = 15
LOGDIR = "."

IGNORE_INDEX = -100  # label value excluded from the loss
IMAGE_TOKEN_INDEX = -200  # placeholder id standing for one image's features in `input_ids`

DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"

DEFAULT_CONV_MODE = "vicuna_v1"  # template that released (v1-trained) models were instruction-tuned with

# The model the miniature reproduction trained (docs/Miniature.md): a few MB in the released checkpoint layout, shipped
# with the package so that every front end answers something sensible when no --model-path is given.
MINIATURE_MODEL_PATH = str(Path(__file__).resolve().parent / "assets" / "share4v-miniature")
