"""The one validator for user-written keys and values: run configs (:mod:`cspwrc.engine.config`), data YAML and
COCO JSON (:mod:`cspwrc.data.checks`) and detector configs (:meth:`cspwrc.det.DetectorConfig.from_dict`).

These functions raise :class:`Fault`, which says *what* is wrong (an unknown key with the nearest valid one, a
value of the wrong type); the caller knows *where* (file, record, dotted key) and re-raises its own
:class:`~cspwrc.errors.InputError` (``ConfigError`` or ``DataError``), so every tool reports it the same way.
:func:`build_dataclass` is the one strict builder of nested config dataclasses from mappings (YAML, JSON metadata,
keyword arguments), :func:`merge` the one way a mapping of overrides goes over another.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar

from cspwrc.errors import ConfigError, Fault  # Fault re-exported: raised here, defined with the other errors

__all__ = [
    "Fault",
    "build_dataclass",
    "check_keys",
    "check_value",
    "merge",
    "nearest",
    "require",
    "type_name",
    "unknown_key",
]

T = TypeVar("T")


def nearest(key: str, valid: Iterable[str]) -> str | None:
    """The valid key closest to ``key`` (difflib), or None when none is close."""
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.5)
    return close[0] if close else None


def unknown_key(key: str, valid: Iterable[str], noun: str = "key", shown: str | None = None) -> str:
    """``unknown key 'epohcs'; did you mean 'epochs'?`` (or the list of valid keys when none is close).

    ``shown`` is how the key is named in the message (e.g. its dotted path); ``key`` is what is matched.
    """
    valid = list(valid)
    close = nearest(key, valid)
    hint = f"did you mean {close!r}?" if close else f"valid {noun}s: {', '.join(map(str, valid))}"
    return f"unknown {noun} {key if shown is None else shown!r}; {hint}"


def check_keys(keys: Iterable[Any], valid: Iterable[str], noun: str = "key") -> None:
    """Raise :class:`Fault` for the first key not in ``valid``, naming the nearest valid key."""
    valid = list(valid)
    for key in keys:
        if key not in valid:
            raise Fault(unknown_key(str(key), valid, noun))


def type_name(tp: Any) -> str:
    """``int``, ``int or float`` (tuple of types), ``list[int] | None`` (typing)."""
    if isinstance(tp, tuple):
        return " or ".join(type_name(t) for t in tp)
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _wrong_type(value: Any, tp: Any) -> Fault:
    return Fault(f"expected {type_name(tp)}, got {type(value).__name__} {value!r:.60}")


def check_value(value: Any, tp: Any) -> Any:  # noqa: C901 - one flat branch per type form reads best in one place
    """``value`` checked against type ``tp`` and returned, or :class:`Fault`.

    ``tp``: a class, a tuple of classes (any of them), or a typing form (``X | None``, ``Literal[...]``,
    ``dict[str, X]``, ``list[X]``, ``Any``). Conversions: an int is accepted as a float; a list or tuple for
    ``list[X]`` becomes a list. A bool is never an int (keeps ``epochs: true`` from passing as 1).
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if isinstance(tp, tuple) or origin in (typing.Union, types.UnionType):
        for arm in tp if isinstance(tp, tuple) else args:
            try:
                return check_value(value, arm)
            except Fault:
                continue
        raise _wrong_type(value, tp)
    if origin is Literal:
        if value not in args:
            close = nearest(str(value), map(str, args))
            hint = f" (did you mean {close!r}?)" if close else ""
            raise Fault(f"{value!r} is not one of {', '.join(repr(c) for c in args)}{hint}")
        return value
    if tp is type(None) or tp is None:
        if value is not None:
            raise Fault(f"expected null, got {value!r:.60}")
        return None
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise Fault(f"expected a mapping with string keys, got {type(value).__name__} {value!r:.60}")
        return dict(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _wrong_type(value, tp)
        return [check_value(v, args[0]) if args else v for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (isinstance(value, bool) and tp is not bool) or not isinstance(value, tp):
        raise _wrong_type(value, tp)
    return value


def require(ok: bool, key: str, rule: str, value: Any) -> None:
    """The range check of a config: :class:`~cspwrc.errors.ConfigError` ``KEY: must be RULE, got VALUE`` unless
    ``ok``. In a ``__post_init__`` the key is the field's name; :func:`build_dataclass` puts the section's path before
    it (``model.head.reg_max: must be >= 1 ...``)."""
    if not ok:
        raise ConfigError(f"{key}: must be {rule}, got {value!r:.80}")


def build_dataclass(cls: type[T], data: Any, prefix: str = "") -> T:
    """Dataclass ``cls`` from a mapping, strictly: every key a field, every value of its field's type (checked by
    :func:`check_value`), a dataclass-typed field built from a nested mapping; missing keys keep their defaults.

    Faults name the dotted key (``prefix.key``). A range check in a config's ``__post_init__`` raises
    :class:`~cspwrc.errors.ConfigError` naming its field (``reg_max: must be >= 1``); it comes back as a Fault under
    the dotted path of that config (``model.head.reg_max: must be >= 1``). An instance of ``cls`` passes through.
    """
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise Fault(f"{prefix or 'top level'}: expected a mapping, got {data!r:.60} ({type(data).__name__})")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise Fault(unknown_key(str(key), names, shown=dotted))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_dataclass(tp, value, dotted)
            continue
        try:
            kwargs[key] = check_value(value, tp)
        except Fault as fault:
            raise Fault(f"{dotted}: {fault}") from None
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise Fault(f"{prefix}.{err}" if prefix else str(err)) from None


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge of nested mappings; ``over`` wins, key by key (also inside open sections such as a backbone's
    ``kwargs``)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
