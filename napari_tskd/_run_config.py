"""The run's config as the tabs show it: ``config.yaml`` plus the changes the user made in them.

Every stage tab binds its fields to dotted paths of ``tskd.config.RunConfig`` (``Field``). A
change the user makes is recorded at once (``ConfigEdits.record``) and every config the context
hands out (``RunContext.config``) carries it, so every button - a tab's own, *Train* / *Run all
stages*, the Loop's *Retrain* - runs with what the tabs show, not with the file's or the
defaults' values. Two fields bound to one path (each tab's Device) show the same value.

A field whose text cannot be read (a learning rate "fast", a checkpoint that does not exist) is
kept as an error; starting a job while one is shown is refused with its one-sentence message.
Values a tab shows because it read them from the run (``loading``) are not edits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any


def _same(value: Any) -> Any:
    return value


@dataclass(eq=False)
class Field:
    """One form field bound to one setting of the run's config.

    Attributes:
        key: Dotted path in ``RunConfig``, e.g. ``"teacher.train.max_steps"``.
        widget: The magicgui value widget (its ``changed`` signal and ``value``).
        parse: The widget's value to the config's value; raises ``TskdInputError`` naming the
            field for a value that cannot be used.
        apply: Writes the parsed value into a config, ``apply(cfg, value)``; None sets ``key``.
    """

    key: str
    widget: Any
    parse: Callable[[Any], Any] = _same
    apply: Callable[[Any, Any], None] | None = None


class ConfigEdits:
    """The user's changes to the open run's config, by dotted key (one per context)."""

    def __init__(self) -> None:
        self._fields: list[Field] = []
        self._values: dict[str, tuple[Field, Any]] = {}
        self._errors: dict[str, str] = {}
        self._loading = 0
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every recorded change (the Train line's estimate).

        Args:
            callback: Takes no arguments; one raising RuntimeError (a deleted Qt widget)
                is dropped.
        """
        self._listeners.append(callback)

    def _changed(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except RuntimeError:  # its widget is gone
                self._listeners.remove(callback)

    def bind(self, fields: Iterable[Field], owner: Any = None) -> None:
        """Record each field's changes from now on.

        Args:
            fields: The fields of one tab.
            owner: The tab (a QWidget); its fields are forgotten when it is destroyed.
        """
        new = list(fields)
        for field in new:
            self._fields.append(field)
            field.widget.changed.connect(lambda *_, f=field: self.record(f))
        if owner is not None:
            owner.destroyed.connect(lambda *_: self._forget(new))

    def _forget(self, fields: list[Field]) -> None:
        self._fields = [f for f in self._fields if f not in fields]

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        """While a tab shows values read from the run, its field changes are not edits."""
        self._loading += 1
        try:
            yield
        finally:
            self._loading -= 1

    def record(self, field: Field) -> None:
        """Read ``field``'s value into the edits (or keep its error); show it in its twins.

        Args:
            field: A bound field whose widget changed.
        """
        from tskd.errors import TskdError

        if self._loading:
            return
        try:
            raw = field.widget.value
            value = field.parse(raw)
        except TskdError as exc:
            self._errors[field.key] = str(exc)
            return
        except RuntimeError:  # its Qt widget is gone
            return
        self._errors.pop(field.key, None)
        self._values[field.key] = (field, value)
        with self.loading():
            for twin in self._fields:
                if twin is not field and twin.key == field.key:
                    with contextlib.suppress(RuntimeError, ValueError):
                        twin.widget.value = raw
        self._changed()

    def put(self, key: str, value: Any) -> None:
        """Record a change the plugin makes (a machine preset) and show it in the bound fields.

        Args:
            key: Dotted path in ``RunConfig``.
            value: The config's value, which is also what the fields show.
        """
        self._errors.pop(key, None)
        self._values[key] = (Field(key, None), value)
        with self.loading():
            for field in self._fields:
                if field.key == key:
                    with contextlib.suppress(RuntimeError, ValueError):
                        field.widget.value = value
        self._changed()

    def edited(self, key: str) -> bool:
        """Whether the user changed the setting ``key`` (a dotted path) in this run."""
        return key in self._values

    def apply(self, cfg: Any) -> Any:
        """Write every edit into ``cfg`` (a ``RunConfig``), in place; returns ``cfg``.

        Args:
            cfg: The run's config as read from ``config.yaml`` (or the defaults).
        """
        for key, (field, value) in self._values.items():
            if field.apply is not None:
                field.apply(cfg, value)
            else:
                set_key(cfg, key, value)
        return cfg

    def check(self) -> None:
        """Raise the first field error (``TskdInputError``, one sentence); files are re-checked.

        Raises:
            TskdInputError: A field shows a value that cannot be used.
        """
        from tskd.errors import TskdInputError

        for field, _value in list(self._values.values()):
            if field.widget is not None:
                self.record(field)  # a checkpoint chosen earlier may have been moved since
        if self._errors:
            raise TskdInputError(next(iter(self._errors.values())))

    def clear(self) -> None:
        """Forget every edit and error (another run folder was opened)."""
        self._values.clear()
        self._errors.clear()
        self._changed()


def set_key(cfg: Any, key: str, value: Any) -> None:
    """Set the dotted attribute path ``key`` of ``cfg`` to ``value``.

    Args:
        cfg: A ``RunConfig`` (or any nested dataclass).
        key: E.g. ``"teacher.train.epochs"``.
        value: The new value.
    """
    *parents, last = key.split(".")
    target = cfg
    for name in parents:
        target = getattr(target, name)
    setattr(target, last, value)


def set_device(cfg: Any, device: str) -> None:
    """``Field.apply`` of a Device field: the run's device for every stage (``set_device``)."""
    cfg.set_device(device)
