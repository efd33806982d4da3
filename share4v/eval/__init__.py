"""Evaluation: `run_share4v.eval_model`, the answer-file loop (`answer_loop`) behind `model_vqa_loader`, pure scorers in
`metrics`, and the scorer command lines (`eval_pope`, `eval_textvqa`); more benchmark drivers are to come."""
