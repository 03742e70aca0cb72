"""Default strengths of a router update, in one place for `run_update`, the CLI and the feedback replay.

Plain numbers in a module that imports nothing, so the command line can show them without loading torch.
What each one does: `training.update.run_update`'s docstring; why these values: benchmarks/FEEDBACK.md.
"""

HEAD_REFIT = 30.0          # penalty of the quality-head refit toward the current head (None = fine-tune)
HEAD_TRANSFER = 20.0       # prior strength, in outcomes, of a new pool member's head mixture (0 = off)
LOG_VAL_FRACTION = 0.1     # share of the logged prompts kept for early stopping when fine-tuning
REWARD_CALIBRATION = 10.0  # pseudo-requests shrinking the promotion check's reward-model calibration
