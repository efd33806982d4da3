"""Evaluation: `run_share4v.eval_model`, pure scorers in `metrics`, and the scorer command lines (`eval_pope`,
`eval_textvqa`); the benchmark drivers are still to come."""
