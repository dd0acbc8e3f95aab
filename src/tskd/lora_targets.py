"""LoRA target modules: module names or patterns from a small, safe regular-expression grammar.

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

  - literal characters, ``.`` (any character), escaped punctuation (``\\.``, ``\\-``, ...),
  - the classes ``\\d \\D \\w \\W \\s \\S`` and bracket classes ``[a-z0-9_]``, ``[^.]``,
  - the quantifiers ``*``, ``+``, ``?``, ``{m}``, ``{m,}``, ``{m,n}`` (m, n <= 64), each
    directly after one character, dot or class,
  - alternation ``|`` and groups ``( )`` / ``(?: )`` that are not themselves repeated,
  - an optional ``^`` at the start and ``$`` at the end (redundant: the whole name must match).

Refused, each with a one-line ``TskdInputError``: a quantifier after a group (nested
quantifiers, the cause of catastrophic backtracking), repeated or lazy quantifiers (``a**``,
``a+?``), backreferences and other escapes (``\\1``, ``\\b``, ``\\x41``), lookarounds, named
groups and inline flags (``(?=``, ``(?P<``, ``(?i)``), unbalanced brackets, empty targets, a
target longer than ``MAX_TARGET_CHARS`` and more than ``MAX_TARGETS`` targets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tskd.errors import TskdInputError

MAX_TARGET_CHARS = 256  # longer than any module path of SAM written as a pattern
MAX_TARGETS = 64
MAX_REPEAT = 64  # largest m or n in {m,n}

_NAME = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")  # fixed, linear-time pattern
_QUANT_START = "*+?{"
_CLASS_ESCAPES: dict[str, Callable[[str], bool]] = {
    "d": str.isdecimal,
    "D": lambda c: not c.isdecimal(),
    "w": lambda c: c.isalnum() or c == "_",
    "W": lambda c: not (c.isalnum() or c == "_"),
    "s": str.isspace,
    "S": lambda c: not c.isspace(),
}

Pred = Callable[[str], bool]


class _Refused(Exception):
    """Why a target is not in the grammar (turned into a TskdInputError by ``parse_target``)."""


# ------------------------------------------------------------------------------- parsing
# AST: ("atom", pred) | ("seq", [nodes]) | ("alt", [nodes]) | ("rep", atom, lo, hi or None)


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def take(self) -> str:
        c = self.peek()
        self.i += 1
        return c

    def parse(self) -> tuple:
        node = self.alt()
        if self.i < len(self.s):  # only an unmatched ')' stops alt() early
            raise _Refused(f"it has an unmatched ')' at position {self.i}")
        return node

    def alt(self) -> tuple:
        branches = [self.seq()]
        while self.peek() == "|":
            self.take()
            branches.append(self.seq())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def seq(self) -> tuple:
        items: list[tuple] = []
        while self.peek() not in ("", "|", ")"):
            items.append(self.piece())
        return ("seq", items)

    def piece(self) -> tuple:
        start = self.i
        c = self.peek()
        if c == "(":
            self.take()
            if self.peek() == "?":
                self.take()
                if self.take() != ":":
                    raise _Refused(
                        f"'(?' at position {start} starts a lookaround, named group or flag, "
                        "which LoRA targets do not allow (only '(?:' groups)"
                    )
            node = self.alt()
            if self.take() != ")":
                raise _Refused(f"the group opened at position {start} is not closed")
            if self.peek() and self.peek() in _QUANT_START:
                raise _Refused(
                    f"the group at position {start} is repeated by '{self.peek()}' "
                    "(a nested quantifier, which can make matching take minutes); repeat single "
                    "characters or classes only"
                )
            return node
        if c in _QUANT_START:
            raise _Refused(f"'{c}' at position {start} repeats nothing")
        atom = ("atom", self.atom())
        if self.peek() and self.peek() in _QUANT_START:
            lo, hi = self.quantifier()
            if self.peek() and self.peek() in _QUANT_START:
                raise _Refused(
                    f"the quantifier at position {self.i} follows another one (repeated or lazy "
                    "quantifiers are not allowed)"
                )
            return ("rep", atom, lo, hi)
        return atom

    def quantifier(self) -> tuple[int, int | None]:
        c = self.take()
        if c == "*":
            return 0, None
        if c == "+":
            return 1, None
        if c == "?":
            return 0, 1
        start = self.i - 1
        end = self.s.find("}", self.i)
        m = re.fullmatch(r"(\d{1,3})(,(\d{0,3}))?", self.s[self.i : end]) if end > 0 else None
        if m is None:
            raise _Refused(f"'{{' at position {start} does not start a {{m}} or {{m,n}} quantifier")
        self.i = end + 1
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
        if lo > MAX_REPEAT or (hi is not None and not lo <= hi <= MAX_REPEAT):
            raise _Refused(
                f"the quantifier at position {start} needs m <= n <= {MAX_REPEAT}"
            )
        return lo, hi

    def escape(self, in_class: bool) -> Pred | str:
        pos = self.i
        self.take()  # the backslash
        c = self.take()
        if c == "":
            raise _Refused("it ends with a lone backslash")
        if c in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[c]
        if c.isalnum() or c == "_":
            what = "backreference" if c.isdigit() else "escape"
            raise _Refused(
                f"the {what} '\\{c}' at position {pos} is not allowed (only \\d \\w \\s, their "
                "capitals and escaped punctuation)"
            )
        return c

    def atom(self) -> Pred:
        c = self.peek()
        if c == ".":
            self.take()
            return lambda _c: True
        if c in "^$":
            raise _Refused(f"'{c}' at position {self.i} is an anchor; only a leading ^ and a "
                           "trailing $ are allowed")
        if c == "\\":
            e = self.escape(in_class=False)
            return e if callable(e) else _literal(e)
        if c == "[":
            return self.char_class()
        self.take()
        return _literal(c)

    def char_class(self) -> Pred:
        start = self.i
        self.take()  # '['
        negate = self.peek() == "^"
        if negate:
            self.take()
        preds: list[Pred] = []
        first = True
        while True:
            c = self.peek()
            if c == "":
                raise _Refused(f"the class '[' at position {start} is not closed")
            if c == "]" and not first:
                self.take()
                break
            first = False
            if c == "\\":
                e = self.escape(in_class=True)
                if callable(e):
                    preds.append(e)
                    continue
                lo = e
            else:
                lo = self.take()
            if self.peek() == "-" and self.i + 1 < len(self.s) and self.s[self.i + 1] != "]":
                self.take()
                if self.peek() == "\\":
                    e = self.escape(in_class=True)
                    if callable(e):
                        raise _Refused(
                            f"the range in the class at position {start} ends in a class"
                        )
                    hi = e
                else:
                    hi = self.take()
                if hi < lo:
                    raise _Refused(
                        f"the range {lo}-{hi} in the class at position {start} is reversed"
                    )
                preds.append(lambda ch, lo=lo, hi=hi: lo <= ch <= hi)
            else:
                preds.append(_literal(lo))
        if negate:
            return lambda ch: not any(p(ch) for p in preds)
        return lambda ch: any(p(ch) for p in preds)


def _show(text: str) -> str:
    """``text`` quoted for a one-line message (repr only when it holds unprintable characters)."""
    return f"'{text}'" if text.isprintable() else repr(text)


def _literal(c: str) -> Pred:
    return lambda ch: ch == c


# ------------------------------------------------------------------------------- matching
# Pike-VM program: ("char", pred, next) | ("split", a, b) | ("match",)


def _compile(node: tuple) -> list[tuple]:
    prog: list[list] = []

    def emit(ins: list) -> int:
        prog.append(ins)
        return len(prog) - 1

    def gen(n: tuple) -> tuple[int, list[tuple[int, int]]]:
        """Code for ``n``; returns (entry, holes) where holes are (pc, slot) to patch."""
        kind = n[0]
        if kind == "atom":
            pc = emit(["char", n[1], None])
            return pc, [(pc, 2)]
        if kind == "seq":
            if not n[1]:
                pc = emit(["split", None, None])  # epsilon: both ways go on
                return pc, [(pc, 1), (pc, 2)]
            entry, holes = gen(n[1][0])
            for item in n[1][1:]:
                e, h = gen(item)
                for pc, slot in holes:
                    prog[pc][slot] = e
                holes = h
            return entry, holes
        if kind == "alt":
            entry, holes = gen(n[1][0])
            for branch in n[1][1:]:
                e, h = gen(branch)
                entry = emit(["split", entry, e])
                holes = holes + h
            return entry, holes
        # rep: lo mandatory copies, then a loop (hi None) or hi - lo optional copies
        _, atom, lo, hi = n
        frags: list[tuple[int, list[tuple[int, int]]]] = [gen(atom) for _ in range(lo)]
        if hi is None:
            loop = emit(["split", None, None])
            body, bholes = gen(atom)
            prog[loop][1] = body
            for pc, slot in bholes:
                prog[pc][slot] = loop
            frags.append((loop, [(loop, 2)]))
        else:
            out: list[tuple[int, int]] = []
            first: int | None = None
            prev: list[tuple[int, int]] = []
            for _ in range(hi - lo):  # opt -> (atom -> next opt | out)
                opt = emit(["split", None, None])
                body, bholes = gen(atom)
                prog[opt][1] = body
                out.append((opt, 2))
                for pc, slot in prev:
                    prog[pc][slot] = opt
                first = opt if first is None else first
                prev = bholes
            if first is not None:
                frags.append((first, out + prev))
        if not frags:  # {0} or {0,0}: the empty string
            return gen(("seq", []))
        entry, holes = frags[0]
        for e, h in frags[1:]:
            for pc, slot in holes:
                prog[pc][slot] = e
            holes = h
        return entry, holes

    entry, holes = gen(node)
    done = emit(["match"])
    for pc, slot in holes:
        prog[pc][slot] = done
    prog.append(["start", entry])
    return [tuple(ins) for ins in prog]


def _run(prog: list[tuple], text: str) -> bool:
    """Whether ``prog`` matches all of ``text``; O(len(text) * len(prog)) time."""

    def closure(pcs: Iterable[int]) -> set[int]:
        seen: set[int] = set()
        stack = list(pcs)
        while stack:
            pc = stack.pop()
            if pc in seen:
                continue
            seen.add(pc)
            if prog[pc][0] == "split":
                stack += [prog[pc][1], prog[pc][2]]
        return seen

    states = closure([prog[-1][1]])
    for ch in text:
        states = closure(prog[pc][2] for pc in states if prog[pc][0] == "char" and prog[pc][1](ch))
        if not states:
            return False
    return any(prog[pc][0] == "match" for pc in states)


@dataclass(frozen=True)
class Target:
    """One parsed LoRA target: ``text`` as given; ``is_name`` for the dotted-name kind."""

    text: str
    is_name: bool
    program: tuple = ()

    def matches(self, module_name: str) -> bool:
        """Whether the module called ``module_name`` (full dotted path inside SAM) is targeted."""
        if self.is_name:
            return module_name == self.text or module_name.endswith("." + self.text)
        return _run(list(self.program), module_name)


def parse_target(text: object, where: str = "LoRA target") -> Target:
    """Parse one target (see the module docstring); ``where`` names it in the error.

    Raises ``TskdInputError`` (one sentence) when ``text`` is not a non-empty string of at most
    ``MAX_TARGET_CHARS`` characters in the grammar. Takes time linear in the target's length.
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
        prog = _compile(_Parser(body).parse())
    except _Refused as exc:
        raise TskdInputError(
            f"{where} {_show(text)} is not a safe pattern: {exc}; see the LoRA target grammar in "
            "docs/user-guide.md"
        ) from None
    return Target(text, False, tuple(prog))


def check_targets(targets: object, where: str = "LoRA targets") -> list[Target]:
    """Parse a list of targets (1..``MAX_TARGETS`` strings); raises ``TskdInputError``."""
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
    """The names (in the given order) that at least one of ``targets`` matches."""
    parsed = check_targets(list(targets))
    return [n for n in names if any(t.matches(n) for t in parsed)]
