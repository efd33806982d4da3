"""Evaluation entry points (`run_share4v.eval_model`; benchmark drivers to come)."""
