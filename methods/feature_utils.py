"""Shared pieces of the feature methods: which stage taps to pair between two networks."""

from __future__ import annotations

from kdbench.models import Network


def paired_stages(student: Network, teacher: Network, skip_stem: bool = True) -> tuple[tuple[str, ...],
                                                                                       tuple[str, ...]]:
    """The stage taps matched one to one, from the last stage backwards (RepDistiller pairs its ``feat[1:-1]``:
    every stage after the stem); as many pairs as the shallower network has."""
    first = 1 if skip_stem else 0
    s_names, t_names = student.tap_names[first:], teacher.tap_names[first:]
    n = min(len(s_names), len(t_names))
    return tuple(s_names[len(s_names) - n:]), tuple(t_names[len(t_names) - n:])
