"""Typed configuration from plain mappings, with errors that name the key path.

The low layer every typed object of kdbench is built with (a suite's settings, a run spec, a record): a value is
checked against its type annotation by :func:`coerce`, a frozen dataclass is built from a mapping by
:func:`build_dataclass` (unknown keys name themselves and the known ones), keyword parameters are checked against a
signature by :func:`resolve_params`. A dataclass declares each field's own constraints next to the field
(:func:`setting` with :func:`rule`, :func:`at_least`, :func:`above`, :func:`one_of`); they are checked when it is
built. Every problem is one :class:`ConfigError` whose message starts with the key path
(``train.epochs: must be >= 1, got 0``).

Imports nothing from kdbench: any layer may use it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A configuration that cannot be used. ``key`` is the dotted key path, ``source`` the file it came from."""

    def __init__(self, key: str, message: str, source: str | None = None) -> None:
        self.key, self.message, self.source = key, message, source
        super().__init__(f"{key}: {message}" if key else message)

    def __str__(self) -> str:
        text = f"{self.key}: {self.message}" if self.key else self.message
        return f"{self.source}: {text}" if self.source else text


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError(key, message)`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, message)


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values (tuples and sets become lists, anything else unknown its ``str``)."""
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple | set) else str(o)))


def key_path_str(path: Sequence[str | int]) -> str:
    """``['methods', 1, 'T']`` -> ``methods[1].T``."""
    out = ""
    for token in path:
        out += f"[{token}]" if isinstance(token, int) else (f".{token}" if out else token)
    return out


def refuse_non_finite(node: Any, path: Sequence[str | int] = ()) -> None:
    """No value anywhere in a raw tree may be .inf or .nan (a job would divide by it, JSON would store null)."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(key_path_str(path), f"expected a finite number, got {node!r}")
    if isinstance(node, dict):
        for key, value in node.items():
            refuse_non_finite(value, [*path, str(key)])
    elif isinstance(node, list):
        for i, value in enumerate(node):
            refuse_non_finite(value, [*path, i])


# ------------------------------------------------------------------------------------------ declared checks


@dataclass(frozen=True)
class Rule:
    """One constraint of a field: ``test(value, obj)`` must hold, else ``message`` (a ``str.format`` template
    with ``value`` and ``obj``, or a function of both) is the error, at the field's key, or at the object's
    key with ``whole=True`` (a constraint on the combination, e.g. "exactly one of")."""

    test: Callable[[Any, Any], bool]
    message: str | Callable[[Any, Any], str]
    whole: bool = False

    def apply(self, value: Any, obj: Any, key: str, field_key: str) -> None:
        """Raise :class:`ConfigError` if ``value`` (the field of ``obj``) breaks the rule."""
        if not self.test(value, obj):
            text = self.message(value, obj) if callable(self.message) else self.message.format(value=value, obj=obj)
            raise ConfigError(key if self.whole else field_key, text)


def rule(test: Callable[[Any, Any], bool], message: str | Callable[[Any, Any], str], whole: bool = False) -> Rule:
    """A :class:`Rule`: ``test(value, obj)`` must hold, else ``message``."""
    return Rule(test, message, whole)


def at_least(bound: float, got: bool = True) -> Rule:
    """``value >= bound`` (``must be >= bound, got value``; without ``got`` the message stops at the bound)."""
    return rule(lambda v, _: v >= bound, f"must be >= {bound}" + (", got {value}" if got else ""))


def above(bound: float, got: bool = True, optional: bool = False) -> Rule:
    """``value > bound`` (None passes with ``optional``)."""
    return rule(lambda v, _: (optional and v is None) or v > bound,
                f"must be > {bound}" + (", got {value}" if got else ""))


def one_of(what: str, *names: str) -> Rule:
    """``value`` is one of ``names`` (``unknown <what> 'value' (known: a, b)``)."""
    return rule(lambda v, _: v in names, f"unknown {what} '{{value}}' (known: {', '.join(sorted(names))})")


def setting(default: Any = dataclasses.MISSING, *rules: Rule, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that declares its constraints: ``epochs: int = setting(30, at_least(1))``."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"rules": rules})


def check_fields(obj: Any, key: str) -> None:
    """Check every field's declared rules, the fields named in the class's ``check_order`` first (in that
    order), then the others in field order; the first broken rule raises :class:`ConfigError`."""
    order = getattr(obj, "check_order", ())
    fields = dataclasses.fields(obj)
    for f in sorted(fields, key=lambda f: order.index(f.name) if f.name in order else len(order)):
        for one in f.metadata.get("rules", ()):
            one.apply(getattr(obj, f.name), obj, key, f"{key}.{f.name}")


class Settings:
    """Base of a frozen settings dataclass whose fields declare their checks (:func:`setting`). A subclass with
    constraints across fields that no single field owns overrides :meth:`check` and calls it first.
    ``check_order`` names fields whose rules run before the others' (the first problem found is the one reported,
    so the order is part of what a user sees)."""

    check_order: ClassVar[tuple[str, ...]] = ()

    def check(self, key: str) -> None:
        """Raise :class:`ConfigError` (key paths under ``key``) unless every declared constraint holds."""
        check_fields(self, key)


# ------------------------------------------------------------------------------------------ building

_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the type annotation ``tp`` (ints pass as floats); return it converted."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err.message)
        raise ConfigError(key, errors[0] if len(errors) == 1 else f"expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key)
    if origin in (list, tuple) or tp in (list, tuple):
        return _coerce_sequence(value, tp, origin, args, key)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return dict(value)
    return _coerce_scalar(value, tp, key)


def _coerce_sequence(value: Any, tp: Any, origin: Any, args: tuple[Any, ...], key: str) -> Any:
    if not isinstance(value, list | tuple):
        raise ConfigError(key, f"expected a list, got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ConfigError(key, f"expected {len(args)} values, got {len(value)}")
        return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    item = args[0] if args else Any
    items = [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple or tp is tuple else items


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads 5e-4 as a string: accept what is plainly a number
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        if not math.isfinite(value):  # .inf and .nan would reach the jobs and be written as null
            raise ConfigError(key, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    return value


def build_dataclass(cls: type, value: Any, key: str) -> Any:
    """Build a frozen settings dataclass from a mapping; unknown keys name themselves and the known ones. The
    object's ``check(key)`` (its declared constraints, see :class:`Settings`) runs before it is returned."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a mapping, got {value!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, item in value.items():
        sub = f"{key}.{name}" if key else str(name)
        if name not in names:
            raise ConfigError(sub, f"unknown key '{name}' (known: {', '.join(sorted(names))})")
        kwargs[name] = coerce(item, hints[name], sub)
    for f in dataclasses.fields(cls):
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}.{f.name}" if key else f.name, "required key is missing")
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check(key)
    return obj


def resolve_params(signature: dict[str, inspect.Parameter], hints: dict[str, Any], given: dict[str, Any],
                   key: str, what: str) -> dict[str, Any]:
    """Check ``given`` keyword parameters against a signature; return all of them with defaults filled in."""
    resolved = {}
    for name, value in given.items():
        if name not in signature:
            known = ", ".join(sorted(signature)) or "none"
            raise ConfigError(f"{key}.{name}", f"unknown parameter '{name}' of {what} (known: {known})")
        resolved[name] = coerce(value, hints.get(name, Any), f"{key}.{name}")
    for name, param in signature.items():
        if name not in resolved:
            if param.default is inspect.Parameter.empty:
                raise ConfigError(f"{key}.{name}", f"required parameter of {what} is missing")
            resolved[name] = param.default
    return jsonable(resolved)
