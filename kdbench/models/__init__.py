"""Models: the small nets registered into timm's registry and the ``Network`` wrapper.

Any timm model name works in a suite; ``kdbench_model_names()`` lists the ones this project registers.
"""

import timm

from kdbench.models import cifar_zoo, small_nets
from kdbench.models.network import Network, Outputs, count_parameters, create_network


def kdbench_model_names() -> list[str]:
    """The model names kdbench registers into timm."""
    return sorted(n for n in timm.list_models() if n.startswith("kdb_") or n in cifar_zoo.ZOO)


def is_model(name: str) -> bool:
    """True if timm can build ``name`` (kdbench's own models included)."""
    return timm.is_model(name)


__all__ = [
    "Network",
    "Outputs",
    "cifar_zoo",
    "count_parameters",
    "create_network",
    "is_model",
    "kdbench_model_names",
    "small_nets",
]
