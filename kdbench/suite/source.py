"""Suite files: finding them by name, reading them safely (YAML without Python objects, no duplicate keys, bounded
size and depth), resolving ``extends:`` chains into one raw mapping, and ``key.path=value`` overrides.

Everything here works on raw mappings; :mod:`kdbench.suite.load` turns one into a typed
:class:`~kdbench.suite.schema.Suite`.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

from kdbench.config import key_path_str
from kdbench.suite.schema import SuiteError

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
"""The project's checkout (its ``suites/`` folder is where suites are found by default)."""

PACKAGED_SUITES = Path(__file__).resolve().parent.parent / "suites"
"""Where an installed wheel keeps the shipped suites (``kdbench/suites/*.yaml``, package data)."""


def suites_dir() -> Path:
    """Where the shipped suites are: an installed wheel's package data, or the checkout's ``suites/`` folder."""
    return PACKAGED_SUITES if PACKAGED_SUITES.is_dir() else PROJECT_ROOT / "suites"


def suite_dirs() -> list[Path]:
    """Where suites are found by name, in order: the folders of ``$KDBENCH_SUITES`` (``os.pathsep``-separated),
    then the shipped suites (so a suite of one's own may ``extends: smoke``)."""
    own = [Path(part).expanduser() for part in os.environ.get("KDBENCH_SUITES", "").split(os.pathsep) if part]
    return [*own, suites_dir()]


def list_suites() -> list[str]:
    """Names of the suites in :func:`suite_dirs` (a name in several folders once)."""
    return sorted({p.stem for folder in suite_dirs() for p in folder.glob("*.yaml")})


def find_suite(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A suite file by path (absolute, relative to cwd or to ``relative_to``) or by name in :func:`suite_dirs`."""
    candidates = [Path(name_or_path)]
    if relative_to is not None:
        candidates.append(relative_to / name_or_path)
    for folder in suite_dirs():
        candidates += [folder / name_or_path, folder / f"{name_or_path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = ", ".join(str(folder) for folder in suite_dirs())
    raise SuiteError("", f"no suite '{name_or_path}' (not a file; suites in {where}: "
                         f"{', '.join(list_suites()) or 'none'})")


MAX_SUITE_BYTES = 1 << 20
"""A suite file larger than this (1 MiB) is refused: suites are a few kilobytes; anything larger is not one."""

MAX_SUITE_DEPTH = 32
"""Deepest nesting of mappings and lists a suite may have (the deepest real suite has 5)."""


class _DuplicateKeyError(Exception):
    """A key given twice in one YAML mapping (raised by the loader, turned into a :class:`SuiteError`)."""

    def __init__(self, key: str, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _SuiteLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping, naming the key and both lines."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """The mapping of ``node``; a key given twice raises :class:`_DuplicateKeyError` with both lines."""
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in first_line:
                raise _DuplicateKeyError(str(key), first_line[key], line)
            if isinstance(key, str | int | float | bool):
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_yaml(text: str, where: str = "") -> Any:
    """Parse YAML text safely (no Python objects), refusing duplicate keys and nesting deeper than
    :data:`MAX_SUITE_DEPTH`; every problem is one :class:`SuiteError`."""
    try:
        depth = 0
        for event in yaml.parse(text, Loader=_SuiteLoader):  # the event parser keeps its own stack: no recursion
            if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                depth += 1
                if depth > MAX_SUITE_DEPTH:
                    line = event.start_mark.line + 1
                    raise SuiteError("", f"nested deeper than {MAX_SUITE_DEPTH} levels (line {line}): not a suite",
                                     where)
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                depth -= 1
        return yaml.load(text, Loader=_SuiteLoader)  # a SafeLoader subclass: no Python objects
    except yaml.YAMLError as err:
        raise SuiteError("", f"not valid YAML: {' '.join(str(err).split())}", where) from None
    except _DuplicateKeyError as err:
        raise SuiteError(err.key, f"given twice, on lines {err.first} and {err.second} (the last would silently "
                                  "win): keep one", where) from None
    except RecursionError:
        raise SuiteError("", "nested too deeply to read: not a suite", where) from None


def parse_suite_text(path: Path) -> Any:
    """A suite file's parsed YAML: refused with one :class:`SuiteError` if it is too large, binary, not UTF-8
    or not valid YAML."""
    try:
        size = path.stat().st_size
        if size > MAX_SUITE_BYTES:
            raise SuiteError("", f"{size} bytes: larger than a suite can be ({MAX_SUITE_BYTES} bytes)", str(path))
        data = path.read_bytes()
    except OSError as err:
        raise SuiteError("", f"cannot be read: {err.strerror or err}", str(path)) from None
    if b"\0" in data:
        offset = data.index(b"\0")
        raise SuiteError("", f"binary data (a NUL byte at offset {offset}): not a YAML suite", str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SuiteError("", f"not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r})",
                         str(path)) from None
    return safe_yaml(text, str(path))


def read_raw(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Safe-load a suite file and resolve its ``extends:`` chain into one raw mapping."""
    path = path.resolve()
    if path in _seen:
        raise SuiteError("extends", f"circular extends: {' -> '.join(str(p) for p in (*_seen, path))}")
    raw = parse_suite_text(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SuiteError("", "a suite must be a mapping of keys", str(path))
    raw.setdefault("name", path.stem)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise SuiteError("extends", "must be a suite name or path", str(path))
    try:
        base = read_raw(find_suite(parent, relative_to=path.parent), (*_seen, path))
    except SuiteError as err:
        raise SuiteError(err.key or "extends", err.message, err.source or str(path)) from None
    base.pop("name", None)
    return deep_merge(base, raw)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key (recursively); any other value (lists included) replaces the base's; ``null``
    removes the inherited key (its default applies again)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_KEY_PATH = re.compile(r"[^.\[\]]+(\.[^.\[\]]+|\[\d+\])*")


def parse_key_path(key: str) -> list[str | int]:
    """``methods[1].T`` or ``methods.1.T`` -> ``['methods', 1, 'T']``."""
    if not _KEY_PATH.fullmatch(key):
        raise SuiteError(key, "not a key path (write e.g. train.epochs=5 or methods[1].T=2)")
    return [int(index) if index else int(name) if name.isdigit() else name
            for name, index in _TOKEN.findall(key)]


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a raw suite mapping."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise SuiteError(item, "an override must look like key.path=value")
        key, text = item.split("=", 1)
        path = parse_key_path(key.strip())
        value = safe_yaml(text, f"override {item}") if text.strip() else None
        node: Any = raw
        for depth, token in enumerate(path[:-1]):
            where = key_path_str(path[: depth + 1])
            if isinstance(token, int):
                if not isinstance(node, list) or token >= len(node):
                    raise SuiteError(where, f"no list item {token} to override")
                node = node[token]
            else:
                if not isinstance(node, dict):
                    raise SuiteError(where, "is not a mapping")
                node = node.setdefault(token, {})
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise SuiteError(key_path_str(path), f"no list item {last} to override")
        elif not isinstance(node, dict):
            raise SuiteError(key_path_str(path[:-1]), "is not a mapping")
        node[last] = value
    return raw
