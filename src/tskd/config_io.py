"""Configuration dataclasses read from and written to plain dicts and YAML.

The conversion of the typed configuration (``tskd.config``): ``from_dict`` builds any config
dataclass from a nested dict (a YAML file's, a job's), checking every value against its type
annotation and naming the key of each problem; ``to_dict``, ``config_text`` and
``save_config`` go the other way. It knows no particular section: keys of earlier versions are
upgraded through ``tskd.config_compat.UPGRADES`` by the class's name, and a class lists the
sections whose left-out keys take its own defaults in ``SECTION_DEFAULTS``. ``tskd.config``
re-exports these names, so ``tskd.config.from_dict`` and the rest keep working.
"""

from __future__ import annotations

import contextlib
import types
import typing
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from tskd.config_compat import UPGRADES
from tskd.errors import TskdInputError

T = TypeVar("T")


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``, recursing into dataclasses and lists.

    Raises ``TskdInputError`` naming ``where`` for a value of the wrong kind; a float may be
    written as text (YAML reads ``1e-3``, without a dot, as a string).
    """
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise TskdInputError(f"config: '{where}' must be a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        # the member whose container kind matches the value (list or mapping), else the first
        kind = dict if isinstance(value, dict) else list if isinstance(value, list) else None
        match = [a for a in args if typing.get_origin(a) is kind] if kind else []
        return _convert((match or args)[0], value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise TskdInputError(f"config: '{where}' must be a mapping, got {value!r}")
        key_tp, val_tp = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if key_tp is int and isinstance(k, str) and k.strip().isdigit():
                k = int(k)
            out[_convert(key_tp, k, f"{where} key")] = _convert(val_tp, v, f"{where}[{k!r}]")
        return out
    if origin is list:
        if not isinstance(value, list):
            raise TskdInputError(f"config: '{where}' must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise TskdInputError(f"config: '{where}' must be one of {allowed}, got {value!r}")
        return value
    if tp is float:  # YAML reads 1e-3 (no dot) as text: a number written so is taken
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            with contextlib.suppress(ValueError):
                return float(value)
        raise TskdInputError(f"config: '{where}' must be a number, got {value!r}")
    # YAML's true / false are Python bools, which are ints too: never taken as a number
    if tp in (int, str, bool) and (not isinstance(value, tp) or
                                   (tp is int and isinstance(value, bool))):
        raise TskdInputError(f"config: '{where}' must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build a config dataclass from a nested dict; unknown keys are an error.

    Keys of earlier versions are read in their new place first (``tskd.config_compat``). A
    nested section in the class's ``SECTION_DEFAULTS`` (``synth.train``) takes the class's
    defaults for keys left out, others (``teacher.train``) their type's, as they always have.
    A dataclass with a ``check(where)`` method (``LoraSettings``) is checked after it is
    built.

    Args:
        cls: The config dataclass to build (``RunConfig``, ``StudentConfig``, ...).
        data: Its values as plain nested dicts and lists (YAML, JSON); not modified.
        where: The dotted key of ``data`` in messages (``""`` for the top level).

    Returns:
        An instance of ``cls``; sections and keys left out take their defaults.

    Raises:
        TskdInputError: an unknown key, a value of the wrong type or outside its bounds, or a
            key of an earlier version that cannot be read in its new place; the message names
            the key.
    """
    upgrade = UPGRADES.get(cls.__name__)
    if upgrade is not None:
        data = upgrade(data, where)
    for name in getattr(cls, "SECTION_DEFAULTS", ()):  # left-out keys: this section's defaults
        if isinstance(data.get(name), dict):
            own = next(f for f in fields(cls) if f.name == name)  # type: ignore[arg-type]
            data = data | {name: to_dict(own.default_factory()) | data[name]}  # type: ignore[misc]
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise TskdInputError(
            f"config: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    kwargs = {
        k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()
    }
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)  # settings with bounds beyond their types
    if callable(check):
        check(where or cls.__name__)
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of a config dataclass, the inverse of ``from_dict``.

    Args:
        cfg: A config dataclass instance.

    Returns:
        Its fields as nested dicts and lists (``dataclasses.asdict``), YAML- and JSON-safe.
    """
    return asdict(cfg)


def read_config_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML configuration file's top-level mapping (``{}`` for an empty file).

    Args:
        path: The YAML file.

    Returns:
        The file's values as plain nested dicts and lists, not yet checked.

    Raises:
        TskdInputError: the file is missing, is not valid YAML, or holds no mapping at the top
            level.
    """
    path = Path(path)
    if not path.is_file():
        raise TskdInputError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TskdInputError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TskdInputError(f"config file {path} must hold a mapping at the top level")
    return data


def config_text(cfg: Any) -> str:
    """A config dataclass as the YAML text ``save_config`` writes.

    Args:
        cfg: A config dataclass instance.

    Returns:
        YAML text, keys in declaration order.
    """
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML (keys in declaration order), crash-safely.

    Args:
        cfg: A config dataclass instance.
        path: The file to write; replaced atomically (``tskd.atomic.write_text``).
    """
    from tskd import atomic

    atomic.write_text(path, config_text(cfg))

