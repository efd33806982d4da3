"""share4v.eval.metrics: pure benchmark scorers (standard library only; no model, torch or transformers).

VQA soft accuracy and answer normalisation (VQAv2, VizWiz, TextVQA), POPE and MME yes/no scores, GQA and SEED-Bench
exact match, ScienceQA letter extraction, MMBench option matching with circular evaluation, and Q-Bench accuracy.
"""

from share4v.eval.metrics.exact import exact_match_accuracy, gqa_accuracy, gqa_normalize, seed_scores
from share4v.eval.metrics.options import (
    MMBENCH_INDEX_MODULUS,
    match_option,
    mmbench_circular_accuracy,
    qbench_accuracy,
    scienceqa_accuracy,
    scienceqa_extract_letter,
)
from share4v.eval.metrics.vqa import vqa_accuracy, vqa_normalize
from share4v.eval.metrics.yes_no import (
    MME_COGNITION,
    MME_PERCEPTION,
    mme_parse_answer,
    mme_scores,
    pope_parse_answer,
    pope_scores,
)

__all__ = [
    "MMBENCH_INDEX_MODULUS",
    "MME_COGNITION",
    "MME_PERCEPTION",
    "exact_match_accuracy",
    "gqa_accuracy",
    "gqa_normalize",
    "match_option",
    "mmbench_circular_accuracy",
    "mme_parse_answer",
    "mme_scores",
    "pope_parse_answer",
    "pope_scores",
    "qbench_accuracy",
    "scienceqa_accuracy",
    "scienceqa_extract_letter",
    "seed_scores",
    "vqa_accuracy",
    "vqa_normalize",
]
