"""Suites: a YAML file (safe, ``extends:``, ``key=value`` overrides) validated into a typed :class:`Suite` with
errors that name the key, then expanded into teacher jobs and run specs with run ids.

A suite file looks like::

    name: smoke
    dataset: {name: digits}
    regimes: [{name: balanced}, {name: longtail, imbalance: 10}, {name: unlabeled}]
    pairs: [{teacher: kdb_cnn_base, student: kdb_cnn_nano}]
    methods: [{name: vanilla}, {name: kd, T: 4}, {name: mse}]
    seeds: [0, 1, 2]
    train: {epochs: 30, optimizer: sgd, lr: 0.05}
    teacher: {seed: 0, train: {epochs: 40}}
    executor: {name: local, workers: 2}

Every problem is reported as one :class:`SuiteError` whose message starts with the key path
(``methods[2].name: unknown method 'kdd' (known: kd, mse, vanilla)``).

The package, bottom up: :mod:`~kdbench.suite.schema` (the typed suite, its constraints declared with its
fields), :mod:`~kdbench.suite.source` (finding and reading files, ``extends:``, overrides),
:mod:`~kdbench.suite.entries` (dataset, regime and method entries, reference recipes), :mod:`~kdbench.suite.plan`
(expansion, run specs, run ids, dependencies) and :mod:`~kdbench.suite.load` (:func:`load_suite`,
:func:`validate`). The run-spec values (:class:`Recipe`, :class:`TeacherSource`, :class:`EvalSettings`) live in
:mod:`kdbench.spec`, the typed-config machinery (:func:`coerce`, :func:`build_dataclass`) in :mod:`kdbench.config`.
"""

from kdbench.config import ConfigError, build_dataclass, coerce, resolve_params
from kdbench.spec import EvalSettings, Recipe, TeacherSource, TrainConfig
from kdbench.suite.load import load_suite, validate
from kdbench.suite.plan import Plan, expand, spec_id, student_spec, teacher_spec
from kdbench.suite.schema import (
    EXECUTORS,
    SLURM_RESOURCE_KEYS,
    TOP_KEYS,
    Entry,
    ExecutorSettings,
    Pair,
    Suite,
    SuiteError,
    TeacherSettings,
)
from kdbench.suite.source import (
    MAX_SUITE_BYTES,
    MAX_SUITE_DEPTH,
    PROJECT_ROOT,
    apply_overrides,
    deep_merge,
    find_suite,
    list_suites,
    parse_key_path,
    parse_suite_text,
    read_raw,
    safe_yaml,
    suites_dir,
)

__all__ = [
    "EXECUTORS", "MAX_SUITE_BYTES", "MAX_SUITE_DEPTH", "PROJECT_ROOT", "SLURM_RESOURCE_KEYS", "TOP_KEYS",
    "ConfigError", "Entry", "EvalSettings", "ExecutorSettings", "Pair", "Plan", "Recipe", "Suite", "SuiteError",
    "TeacherSettings", "TeacherSource", "TrainConfig", "apply_overrides", "build_dataclass", "coerce", "deep_merge",
    "expand", "find_suite", "list_suites", "load_suite", "parse_key_path", "parse_suite_text", "read_raw",
    "resolve_params", "safe_yaml", "spec_id", "student_spec", "suites_dir", "teacher_spec", "validate",
]
