"""The engine: one training loop for teachers and students, evaluation, checkpoints, recipes."""

from kdbench.engine.checkpoint import load_checkpoint, save_checkpoint, seed_everything, set_deterministic
from kdbench.engine.loop import Evaluation, FitOutcome, Phase, Precision, TrainState, evaluate, fit, phases_of
from kdbench.engine.recipe import build_optimizer, build_scheduler, steps_per_epoch

__all__ = [
           "Evaluation",
           "FitOutcome",
           "Phase",
           "Precision",
           "TrainState",
           "build_optimizer",
           "build_scheduler",
           "evaluate",
           "fit",
           "load_checkpoint",
           "phases_of",
           "save_checkpoint",
           "seed_everything",
           "set_deterministic",
           "steps_per_epoch",
]
