"""Learning from logged outcomes (``neural-router update``): :func:`run_update` and its steps.

``run`` (the update as a whole), ``datasets`` (logs -> weighted training data), ``finetune`` (the
update's training), ``heads`` (what it does to the head rows), ``trust_region`` and ``promotion``
(the off-policy check that decides whether the new router may serve).
"""

from neural_router.training.update.run import run_update

__all__ = ["run_update"]
