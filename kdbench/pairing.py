"""Which methods can run on which teacher -> student pair, and with which values.

A method may refuse a pair's architectures (its ``incompatibility`` check, e.g. a feature method whose taps one
network lacks) or its hyper-parameter values on that pair (its ``__init__`` checks: ``T: 0``, an impossible
width). Both are answered here by building the pair's networks (a 10-class, 3x32x32 problem, no data), once per
pair and per distinct (method, values, pair) in a process, so that a suite is refused before any job starts.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import torch

from kdbench.method import Method, discover_methods


@functools.lru_cache(maxsize=64)
def pair_networks(teacher: str, student: str) -> tuple[Any, Any]:
    """The (student, teacher) networks of a pair, built once per process for a 10-class 3x32x32 problem."""
    from kdbench.models import create_network

    return (create_network(student, num_classes=10, in_chans=3, img_size=32),
            create_network(teacher, num_classes=10, in_chans=3, img_size=32))


def pair_problem(cls: type[Method], teacher: str, student: str) -> str | None:
    """Why a method cannot run on a pair (its ``incompatibility`` check on the two architectures), or None.
    Networks are built only for methods that define such a check."""
    if cls.incompatibility.__func__ is Method.incompatibility.__func__:
        return None
    student_net, teacher_net = pair_networks(teacher, student)
    return cls.incompatibility(student_net, teacher_net)


def value_refusal(method: str, params: Mapping[str, Any], teacher: str, student: str) -> str | None:
    """Why the registered ``method`` with these hyper-parameter values cannot be built on the pair (its own
    ``__init__`` checks), or None."""
    return _refusal(method, json.dumps(params, sort_keys=True), teacher, student)


@functools.lru_cache(maxsize=1024)
def _refusal(method: str, params_json: str, teacher: str, student: str) -> str | None:
    cls = discover_methods().get(method)
    student_net, teacher_net = pair_networks(teacher, student)
    try:
        with torch.random.fork_rng():  # building draws initial weights: leave the caller's RNG as it was
            cls(student_net, teacher_net if cls.needs.teacher else None, num_classes=10, **json.loads(params_json))
    except (ValueError, TypeError, AssertionError) as err:
        return str(err)
    return None
