r"""LoRA target modules: module names or patterns from a small, safe regular-expression grammar.

A target comes from the user's YAML, the teacher widget or a teacher folder's ``meta.json``, so it
is untrusted text. Handing it to ``re`` (as peft does with a string ``target_modules``) lets a
pattern such as ``([a-z_.0-9]+)+!`` backtrack for minutes. Targets are therefore parsed here,
refused unless they belong to the grammar below, and matched by a Thompson automaton whose time
is linear in the module name's length; peft only ever receives the exact module names found.

A target is either

* a **name** - letters, digits and ``_`` in dot-separated parts (``qkv``, ``attn.qkv``,
  ``image_encoder.blocks.0.attn.qkv``) - that matches a module whose full name equals it or
  ends with ``.`` + it (peft's rule for names), or
* a **pattern** that must match a module's whole name (``re.fullmatch`` semantics), built from

  - literal characters, ``.`` (any character), escaped punctuation (``\.``, ``\-``, ...),
  - the classes ``\d \D \w \W \s \S`` and bracket classes ``[a-z0-9_]``, ``[^.]``,
  - the quantifiers ``*``, ``+``, ``?``, ``{m}``, ``{m,}``, ``{m,n}`` (m, n <= 64), each
    directly after one character, dot or class,
  - alternation ``|`` and groups ``( )`` / ``(?: )`` that are not themselves repeated,
  - an optional ``^`` at the start and ``$`` at the end (redundant: the whole name must match).

Refused, each with a one-line ``TskdInputError``: a quantifier after a group (nested
quantifiers, the cause of catastrophic backtracking), repeated or lazy quantifiers (``a**``,
``a+?``), backreferences and other escapes (``\1``, ``\b``, ``\x41``), lookarounds, named
groups and inline flags (``(?=``, ``(?P<``, ``(?i)``), unbalanced brackets, empty targets, a
target longer than ``MAX_TARGET_CHARS`` and more than ``MAX_TARGETS`` targets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tskd.errors import TskdInputError
from tskd.safe_regex import PatternRefused, compile_pattern, fullmatch

MAX_TARGET_CHARS = 256  # longer than any module path of SAM written as a pattern
MAX_TARGETS = 64
_NAME = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")  # fixed, linear-time pattern


def _show(text: str) -> str:
    """``text`` quoted for a one-line message (repr only when it holds unprintable characters)."""
    return f"'{text}'" if text.isprintable() else repr(text)


@dataclass(frozen=True)
class Target:
    """One parsed LoRA target (from ``parse_target``).

    Attributes:
        text: the target as the user gave it.
        is_name: True for the dotted-name kind (matched by peft's suffix rule), False for a
            pattern.
        program: the pattern's compiled program (``tskd.safe_regex.compile_pattern``); empty
            for a name.
    """

    text: str
    is_name: bool
    program: tuple = ()

    def matches(self, module_name: str) -> bool:
        """Tell whether the module called ``module_name`` is targeted.

        A name matches a module whose full name equals it or ends with ``.`` + it (peft's
        rule for string targets); a pattern must match the whole name
        (``tskd.safe_regex.fullmatch``, time linear in the name's length).

        Args:
            module_name: the module's full dotted path inside SAM, e.g.
                ``image_encoder.blocks.0.attn.qkv``.

        Returns:
            True when this target selects the module.
        """
        if self.is_name:
            return module_name == self.text or module_name.endswith("." + self.text)
        return fullmatch(self.program, module_name)


def parse_target(text: object, where: str = "LoRA target") -> Target:
    """Parse one target (see the module docstring for the grammar).

    Takes time linear in the target's length. A leading ``^`` and a trailing unescaped ``$``
    are dropped from a pattern (the whole name must match anyway).

    Args:
        text: the target as read from YAML, the widget or a ``meta.json`` (untrusted; any
            type).
        where: what the target is, to name it in the error (e.g. "LoRA targets[2]").

    Returns:
        The parsed ``Target``.

    Raises:
        TskdInputError: one sentence, when ``text`` is not a string, is empty or blank, is
            longer than ``MAX_TARGET_CHARS`` characters, or is not in the grammar (the
            message says where and why).
    """
    if not isinstance(text, str):
        raise TskdInputError(
            f"{where} must be a module name or pattern (a string), got {text!r:.60}"
        )
    if not text.strip():
        raise TskdInputError(
            f"{where} is empty; give a module name such as 'attn.qkv' or a pattern"
        )
    if len(text) > MAX_TARGET_CHARS:
        raise TskdInputError(
            f"{where} is {len(text)} characters long; at most {MAX_TARGET_CHARS} are allowed"
        )
    if _NAME.fullmatch(text):
        return Target(text, True)
    body = text[1:] if text.startswith("^") else text
    if body.endswith("$"):
        backslashes = len(body[:-1]) - len(body[:-1].rstrip("\\"))
        if backslashes % 2 == 0:
            body = body[:-1]
    try:
        prog = compile_pattern(body)
    except PatternRefused as exc:
        raise TskdInputError(
            f"{where} {_show(text)} is not a safe pattern: {exc}; see the LoRA target grammar in "
            "docs/user-guide.md"
        ) from None
    return Target(text, False, prog)


def check_targets(targets: object, where: str = "LoRA targets") -> list[Target]:
    """Parse a list of LoRA targets.

    Args:
        targets: the list (or tuple) of 1 to ``MAX_TARGETS`` target strings, as read (any
            type).
        where: what the list is, to name it (and ``where[i]`` for an entry) in the error.

    Returns:
        One ``Target`` per entry, in order.

    Raises:
        TskdInputError: ``targets`` is not a list or tuple, is empty, has more than
            ``MAX_TARGETS`` entries, or an entry is refused by ``parse_target``.
    """
    if not isinstance(targets, list | tuple):
        raise TskdInputError(
            f"{where} must be a list of module names or patterns, got {type(targets).__name__}"
        )
    if not targets:
        raise TskdInputError(f"{where} is empty; give at least one module name or pattern")
    if len(targets) > MAX_TARGETS:
        raise TskdInputError(
            f"{where} has {len(targets)} entries; at most {MAX_TARGETS} are allowed"
        )
    return [parse_target(t, f"{where}[{i}]") for i, t in enumerate(targets)]


def matching_modules(names: Iterable[str], targets: Sequence[str]) -> list[str]:
    """Select the module names that at least one target matches.

    Args:
        names: full dotted module names, e.g. those of ``model.named_modules()``.
        targets: target strings (checked with ``check_targets``).

    Returns:
        The matching names, in the order given.

    Raises:
        TskdInputError: ``targets`` is refused by ``check_targets``.
    """
    parsed = check_targets(list(targets))
    return [n for n in names if any(t.matches(n) for t in parsed)]
