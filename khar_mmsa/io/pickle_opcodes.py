"""The opcodes of feature pickles (protocols 0-5), each run on a
:class:`~khar_mmsa.io.pickle_machine.Machine`; an opcode not in :data:`OPCODES` is refused (PERSID,
EXT1/2/4, INST, OBJ, NEWOBJ(_EX), sets, NEXT_BUFFER, READONLY_BUFFER)."""
from __future__ import annotations

import codecs
import sys
from struct import unpack
from typing import Any, Callable, Dict, List

from khar_mmsa.io import pickle_globals as g
from khar_mmsa.io.pickle_budget import PickleReadError
from khar_mmsa.io.pickle_machine import Machine, Stop

__all__ = ["OPCODES"]


def _int_line(m: Machine) -> None:
    text = m.line()
    if text in (b"00", b"01"):  # protocol 0's False / True
        m.push(text == b"01")
        return
    m.push_new(_bounded(m, int(text.rstrip(b"L"))))


def _bounded(m: Machine, value: int) -> int:
    if not -2 ** 64 < value < 2 ** 64:
        raise g.Refusal(f"holds an integer of {value.bit_length()} bits; feature pickles hold "
                        f"numbers of at most 64 bits")
    return value


def _long(m: Machine, nbytes: int) -> None:
    if nbytes > 9:
        raise g.Refusal(f"declares an integer of {nbytes} bytes; feature pickles hold numbers of at "
                        f"most 64 bits", size=True)
    m.push_new(int.from_bytes(m.read(nbytes), "little", signed=True))


def _text(m: Machine, raw: Any, encoding: str = "utf-8") -> None:
    """A string from bytes read (a large read is a Buffer: decoded from its memory, no copy)."""
    view = memoryview(raw.array) if isinstance(raw, g.Buffer) else raw
    m.push_new(str(view, encoding, "surrogatepass" if encoding == "utf-8" else "strict"))


def _raw(m: Machine, n: int) -> None:
    data = m.read(n)
    m.push(data, 64 if isinstance(data, g.Buffer) else sys.getsizeof(data))


def _bytearray(m: Machine, data: Any) -> None:
    big = isinstance(data, g.Buffer)  # charged when read
    m.push(data if big else bytearray(data), 64 + (0 if big else len(data)))


def _global(m: Machine) -> None:
    module = m.line().decode("utf-8")
    m.find_class(module, m.line().decode("utf-8"))


def _stack_global(m: Machine) -> None:
    name, module = m.pop(), m.pop()
    if type(name) is not str or type(module) is not str:
        raise g.Refusal("gives STACK_GLOBAL something other than two strings")
    m.find_class(module, name)


def _proto(m: Machine) -> None:
    if m.read(1)[0] > 5:
        raise g.Refusal("declares a pickle protocol above 5")


def _frame(m: Machine) -> None:
    (n,) = unpack("<Q", m.read(8))
    m.budget.data(n, None if m.size is None else m.size - m.budget.read, m.where)


def _stop(m: Machine) -> None:
    raise Stop


def _pop(m: Machine) -> None:
    if m.stack:
        m.pop()
    else:
        m.pop_mark()


def _tuple_n(n: int) -> Callable[[Machine], None]:
    def run(m: Machine) -> None:
        items = m.stack[-n:] if len(m.stack) >= n else None
        if items is None:
            raise IndexError
        del m.stack[-n:]
        m.tuple_of(items)
    return run


def _string_line(m: Machine) -> None:
    text = m.line()
    if len(text) < 2 or text[0] != text[-1] or text[:1] not in b"\"'":
        raise PickleReadError(f"{m.source}: {m.where()}: a STRING argument is not quoted; the file "
                              f"is corrupt.")
    m.push_new(codecs.escape_decode(text[1:-1])[0].decode("latin-1"))


OPCODES: Dict[int, Callable[[Machine], None]] = {
    0x80: _proto, 0x95: _frame, ord("."): _stop,
    ord("("): Machine.mark, ord("0"): _pop, ord("1"): lambda m: m.pop_mark() and None,
    ord("2"): lambda m: m.fetch(m.stack[-1]),
    ord("N"): lambda m: m.push(None), 0x88: lambda m: m.push(True), 0x89: lambda m: m.push(False),
    ord("I"): _int_line, ord("L"): _int_line,
    ord("J"): lambda m: m.push_new(unpack("<i", m.read(4))[0]),
    ord("K"): lambda m: m.push(m.read(1)[0]),
    ord("M"): lambda m: m.push_new(unpack("<H", m.read(2))[0]),
    0x8a: lambda m: _long(m, m.read(1)[0]), 0x8b: lambda m: _long(m, m.length("<i")),
    ord("F"): lambda m: m.push_new(float(m.line())),
    ord("G"): lambda m: m.push_new(unpack(">d", m.read(8))[0]),
    ord("S"): _string_line,
    ord("T"): lambda m: _text(m, m.read(m.length("<i")), "latin-1"),
    ord("U"): lambda m: _text(m, m.read(m.read(1)[0]), "latin-1"),
    ord("V"): lambda m: m.push_new(str(m.line(), "raw-unicode-escape")),
    ord("X"): lambda m: _text(m, m.read(m.length("<I"))),
    0x8c: lambda m: _text(m, m.read(m.read(1)[0])),
    0x8d: lambda m: _text(m, m.read(m.length("<Q"))),
    ord("B"): lambda m: _raw(m, m.length("<I")), ord("C"): lambda m: _raw(m, m.read(1)[0]),
    0x8e: lambda m: _raw(m, m.length("<Q")),
    0x96: lambda m: _bytearray(m, m.read(m.length("<Q"))),
    ord("]"): lambda m: m.new_container([]), ord("}"): lambda m: m.new_container({}),
    ord(")"): lambda m: m.push(()),
    ord("l"): lambda m: _filled(m, [], m.pop_mark()), ord("d"): lambda m: _filled(m, {}, m.pop_mark()),
    ord("t"): lambda m: m.tuple_of(m.pop_mark()),
    0x85: _tuple_n(1), 0x86: _tuple_n(2), 0x87: _tuple_n(3),
    ord("a"): lambda m: m.grow(m.stack[-2], [m.pop()]),
    ord("e"): lambda m: _grow_marked(m),
    ord("s"): lambda m: _setitem(m), ord("u"): lambda m: _grow_marked(m),
    ord("p"): lambda m: m.memo_put(int(m.line())), ord("q"): lambda m: m.memo_put(m.read(1)[0]),
    ord("r"): lambda m: m.memo_put(unpack("<I", m.read(4))[0]),
    0x94: lambda m: m.memo_put(len(m.memo)),
    ord("g"): lambda m: m.memo_get(int(m.line())), ord("h"): lambda m: m.memo_get(m.read(1)[0]),
    ord("j"): lambda m: m.memo_get(unpack("<I", m.read(4))[0]),
    ord("c"): _global, 0x93: _stack_global,
    ord("R"): Machine.reduce, ord("b"): Machine.build,
}


def _filled(m: Machine, empty: Any, items: List[Any]) -> None:
    m.new_container(empty)
    m.grow(empty, items)


def _grow_marked(m: Machine) -> None:
    items = m.pop_mark()
    m.grow(m.stack[-1], items)


def _setitem(m: Machine) -> None:
    value, key = m.pop(), m.pop()
    m.grow(m.stack[-1], [key, value])
