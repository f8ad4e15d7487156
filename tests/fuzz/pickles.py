"""A small protocol-2 pickle assembler, to write the data.pkl of a torch.save file op by op.

Hand-assembled rather than pickled from objects, so that a test can put any value anywhere: sizes of 2**100,
globals that do not exist, memo indices near 2**32, unknown opcodes, payloads that would run a command.
"""

import struct

PROTO = b"\x80\x02"
STOP = b"."
MARK = b"("
TUPLE = b"t"
EMPTY_TUPLE = b")"
REDUCE = b"R"
BINPERSID = b"Q"
SETITEMS = b"u"
NEWFALSE = b"\x89"


def global_(module: str, name: str) -> bytes:
    """GLOBAL: pushes ``module.name`` as resolved by the unpickler's find_class."""
    return b"c" + f"{module}\n{name}\n".encode()


def string(text: str) -> bytes:
    """BINUNICODE."""
    data = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def integer(value: int) -> bytes:
    """BININT1 / BININT / LONG1, whichever holds ``value``."""
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def tuple_(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def call(function: bytes, *arguments: bytes) -> bytes:
    """``function(*arguments)`` by REDUCE."""
    return function + tuple_(*arguments) + REDUCE


def ordered_dict(items: list[tuple[bytes, bytes]]) -> bytes:
    """An OrderedDict made empty and filled by SETITEMS, as torch.save writes a state dict."""
    body = call(global_("collections", "OrderedDict"))
    if items:
        body += MARK + b"".join(key + value for key, value in items) + SETITEMS
    return body


def storage(type_name: str, key: str, numel: int, module: str = "torch") -> bytes:
    """The persistent id ``("storage", module.type_name, key, "cpu", numel)``."""
    return (
        tuple_(string("storage"), global_(module, type_name), string(key), string("cpu"), integer(numel))
        + BINPERSID
    )


def index_tuple(values: tuple[int, ...]) -> bytes:
    return tuple_(*(integer(v) for v in values))


def memo_put(index: int) -> bytes:
    """LONG_BINPUT: store the top of the stack at memo ``index`` (< 2**32)."""
    return b"r" + struct.pack("<I", index)


def memo_get(index: int) -> bytes:
    """LONG_BINGET."""
    return b"j" + struct.pack("<I", index)


def system_call(command: str) -> bytes:
    """``os.system(command)``: the classic pickle exploit."""
    return call(global_("os", "system"), string(command))


def deep_tuples(inner: bytes, depth: int) -> bytes:
    """``inner`` wrapped in ``depth`` one-element tuples (TUPLE1), with no recursion in the bytes."""
    return inner + b"\x85" * depth
