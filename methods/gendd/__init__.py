"""GenDD (Generative Distribution Distillation): the diffusion process, the head, and the registered method."""

from kdbench.methods.gendd.method import GenDD

__all__ = ["GenDD"]
