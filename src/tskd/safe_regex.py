r"""A small, safe regular-expression subset: parsed here, matched in time linear in the text.

The grammar (literal characters, ``.``, escaped punctuation, the classes ``\d \w \s`` and
their capitals, bracket classes, the quantifiers ``* + ? {m} {m,} {m,n}`` directly after one
character, dot or class, alternation and non-repeated groups) has no nested quantifiers,
backreferences or lookarounds, the causes of catastrophic backtracking in ``re``. A pattern is
parsed by a recursive-descent parser (``PatternRefused`` says why one is not in the grammar),
compiled by Thompson's construction into a Pike-VM program (``compile_pattern``) and run
state-set by state-set (``fullmatch``): O(len(text) * len(program)) time, whatever the pattern.
Its one user is ``tskd.lora_targets``, whose docstring lists the grammar for users.

Sources: the construction and the VM follow Thompson, "Regular expression search algorithm"
(CACM 11(6), 1968) and R. Cox, "Regular Expression Matching: the Virtual Machine Approach"
(2009, swtch.com/~rsc/regexp/regexp2.html), as RE2 does; the ``re`` semantics kept are those
of ``re.fullmatch``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

MAX_REPEAT = 64  # largest m or n in {m,n}
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


class PatternRefused(Exception):
    """Why a pattern is not in the grammar.

    The message is one clause for a sentence (e.g. "it has an unmatched ')' at position 3");
    ``tskd.lora_targets.parse_target`` turns it into a ``TskdInputError``. Not a
    ``TskdError`` itself: this module knows nothing of tskd.
    """


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
            raise PatternRefused(f"it has an unmatched ')' at position {self.i}")
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
                    raise PatternRefused(
                        f"'(?' at position {start} starts a lookaround, named group or flag, "
                        "which LoRA targets do not allow (only '(?:' groups)"
                    )
            node = self.alt()
            if self.take() != ")":
                raise PatternRefused(f"the group opened at position {start} is not closed")
            if self.peek() and self.peek() in _QUANT_START:
                raise PatternRefused(
                    f"the group at position {start} is repeated by '{self.peek()}' "
                    "(a nested quantifier, which can make matching take minutes); repeat single "
                    "characters or classes only"
                )
            return node
        if c in _QUANT_START:
            raise PatternRefused(f"'{c}' at position {start} repeats nothing")
        atom = ("atom", self.atom())
        if self.peek() and self.peek() in _QUANT_START:
            lo, hi = self.quantifier()
            if self.peek() and self.peek() in _QUANT_START:
                raise PatternRefused(
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
            raise PatternRefused(
                f"'{{' at position {start} does not start a {{m}} or {{m,n}} quantifier")
        self.i = end + 1
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
        if lo > MAX_REPEAT or (hi is not None and not lo <= hi <= MAX_REPEAT):
            raise PatternRefused(f"the quantifier at position {start} needs m <= n <= {MAX_REPEAT}")
        return lo, hi

    def escape(self, in_class: bool) -> Pred | str:
        pos = self.i
        self.take()  # the backslash
        c = self.take()
        if c == "":
            raise PatternRefused("it ends with a lone backslash")
        if c in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[c]
        if c.isalnum() or c == "_":
            what = "backreference" if c.isdigit() else "escape"
            raise PatternRefused(
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
            raise PatternRefused(f"'{c}' at position {self.i} is an anchor; only a leading ^ and a "
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
                raise PatternRefused(f"the class '[' at position {start} is not closed")
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
                        raise PatternRefused(
                            f"the range in the class at position {start} ends in a class"
                        )
                    hi = e
                else:
                    hi = self.take()
                if hi < lo:
                    raise PatternRefused(
                        f"the range {lo}-{hi} in the class at position {start} is reversed"
                    )
                preds.append(lambda ch, lo=lo, hi=hi: lo <= ch <= hi)
            else:
                preds.append(_literal(lo))
        if negate:
            return lambda ch: not any(p(ch) for p in preds)
        return lambda ch: any(p(ch) for p in preds)


def _literal(c: str) -> Pred:
    return lambda ch: ch == c


# ------------------------------------------------------------------------------- matching
# Pike-VM program: ("char", pred, next) | ("split", a, b) | ("match",)


Frag = tuple[int, list[tuple[int, int]]]  # (entry pc, holes: (pc, slot) still to patch)


class _Compiler:
    """Thompson construction of a Pike-VM program from a parsed target."""

    def __init__(self) -> None:
        self.prog: list[list] = []

    def emit(self, ins: list) -> int:
        self.prog.append(ins)
        return len(self.prog) - 1

    def patch(self, holes: list[tuple[int, int]], target: int) -> None:
        for pc, slot in holes:
            self.prog[pc][slot] = target

    def chain(self, frags: list[Frag]) -> Frag:
        """The fragments one after the other."""
        entry, holes = frags[0]
        for e, h in frags[1:]:
            self.patch(holes, e)
            holes = h
        return entry, holes

    def gen(self, n: tuple) -> Frag:
        """Code for ``n``; returns (entry, holes) where holes are (pc, slot) to patch."""
        kind = n[0]
        if kind == "atom":
            pc = self.emit(["char", n[1], None])
            return pc, [(pc, 2)]
        if kind == "seq":
            if not n[1]:
                pc = self.emit(["split", None, None])  # epsilon: both ways go on
                return pc, [(pc, 1), (pc, 2)]
            return self.chain([self.gen(item) for item in n[1]])
        if kind == "alt":
            entry, holes = self.gen(n[1][0])
            for branch in n[1][1:]:
                e, h = self.gen(branch)
                entry = self.emit(["split", entry, e])
                holes = holes + h
            return entry, holes
        return self.rep(*n[1:])

    def rep(self, atom: tuple, lo: int, hi: int | None) -> Frag:
        """``lo`` mandatory copies, then a loop (``hi`` None) or ``hi - lo`` optional copies."""
        frags: list[Frag] = [self.gen(atom) for _ in range(lo)]
        if hi is None:
            loop = self.emit(["split", None, None])
            body, bholes = self.gen(atom)
            self.prog[loop][1] = body
            self.patch(bholes, loop)
            frags.append((loop, [(loop, 2)]))
        else:
            out: list[tuple[int, int]] = []
            first: int | None = None
            prev: list[tuple[int, int]] = []
            for _ in range(hi - lo):  # opt -> (atom -> next opt | out)
                opt = self.emit(["split", None, None])
                body, bholes = self.gen(atom)
                self.prog[opt][1] = body
                out.append((opt, 2))
                self.patch(prev, opt)
                first = opt if first is None else first
                prev = bholes
            if first is not None:
                frags.append((first, out + prev))
        if not frags:  # {0} or {0,0}: the empty string
            return self.gen(("seq", []))
        return self.chain(frags)


def _compile(node: tuple) -> list[tuple]:
    """The Pike-VM program of a parsed pattern; its last instruction names the entry."""
    c = _Compiler()
    entry, holes = c.gen(node)
    c.patch(holes, c.emit(["match"]))
    c.prog.append(["start", entry])
    return [tuple(ins) for ins in c.prog]


def fullmatch(prog: Sequence[tuple], text: str) -> bool:
    """Tell whether a compiled pattern matches the whole of ``text`` (``re.fullmatch``).

    The Pike VM runs every thread in lock step, one state set per character, so the time is
    O(len(text) * len(prog)) whatever the pattern (no backtracking).

    Args:
        prog: a program from ``compile_pattern``.
        text: the text to match, e.g. a module's dotted name.

    Returns:
        True when ``prog`` matches all of ``text``.
    """

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


def compile_pattern(body: str) -> tuple:
    """Parse ``body`` and compile it into a Pike-VM program that must match a whole text.

    Takes time linear in the pattern's length (times ``MAX_REPEAT`` for a ``{m,n}`` repeat,
    which is unrolled).

    Args:
        body: a pattern of the grammar in the module docstring, without its optional leading
            ``^`` and trailing ``$`` (the caller strips them).

    Returns:
        The program (a tuple of instructions) for ``fullmatch``.

    Raises:
        PatternRefused: ``body`` is not in the grammar; the message says where and why.
    """
    return tuple(_compile(_Parser(body).parse()))
