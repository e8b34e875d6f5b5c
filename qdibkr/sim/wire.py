"""The TWS API socket framing: length-prefixed frames of NUL-terminated fields.

This module knows bytes and strings only; what the fields mean lives in
``messages.py`` (outgoing) and ``server.py`` (incoming).

A session starts with the client sending ``API\\0`` and one frame holding its
version range (``v157..176``, maybe followed by connect options). Every later
frame, in both directions, is a 4-byte big-endian length followed by UTF-8
fields, each terminated by NUL.
"""

import math
import re
import struct
from dataclasses import dataclass

HANDSHAKE_PREFIX = b"API\0"
UNSET_DOUBLE = 1.7976931348623157e308
UNSET_DOUBLE_TEXT = "1.7976931348623157E308"

# A client may claim any length; refuse frames larger than any real message so a
# garbage length cannot make the simulator buffer gigabytes.
MAX_FRAME = 1 << 20


class FrameError(ValueError):
    """The byte stream cannot be framed any further; the connection must close."""


def field(value) -> str:
    """Format one value as TWS puts it on the wire.

    None is the empty (unset) field, booleans are 0/1, floats use Python's
    ``str`` (so an integral float would read as ``100.0``: callers pass ints for
    integer fields), and the unset double has TWS's own spelling.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if value == UNSET_DOUBLE:
            return UNSET_DOUBLE_TEXT
        if math.isinf(value):
            return "Infinite"
        return str(value)
    text = str(value)
    if "\0" in text:
        raise ValueError(f"a NUL byte cannot travel inside a field: {text!r}")
    return text


def encode(fields) -> bytes:
    """One frame: the length prefix, then every field NUL-terminated."""
    # Strings and ints are most fields: format them inline, the rest through field().
    parts = [f if type(f) is str else str(f) if type(f) is int else field(f) for f in fields]
    if not parts:
        raise ValueError("TWS never sends an empty frame")
    text = "\0".join(parts) + "\0"
    if text.count("\0") != len(parts):
        raise ValueError(f"a NUL byte cannot travel inside a field: {parts!r}")
    payload = text.encode()
    return struct.pack(">I", len(payload)) + payload


class FrameReader:
    """Cuts a byte stream into frames; bytes arrive split and coalesced at will."""

    def __init__(self):
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[str]]:
        """Add received bytes and return every frame now complete, as field lists."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= 4:
            (size,) = struct.unpack_from(">I", self._buffer)
            if size > MAX_FRAME:
                raise FrameError(f"frame of {size} bytes is larger than any TWS message")
            if len(self._buffer) < 4 + size:
                break
            payload = bytes(self._buffer[4 : 4 + size])
            del self._buffer[: 4 + size]
            text = payload.decode("utf-8", errors="replace")
            fields = text.split("\0")
            if fields and fields[-1] == "":
                fields.pop()  # the terminator of the last field
            frames.append(fields)
        return frames


@dataclass(frozen=True)
class VersionRange:
    """What the client announced in its first frame."""

    low: int
    high: int
    options: str


_VERSION_RANGE = re.compile(r"^v(\d+)(?:\.\.(\d+))?(?: (.*))?$")


def parse_version_range(text: str) -> VersionRange:
    """Parse ``v157..176`` or ``v157..176 +PACEAPI`` (a bare ``v176`` means 176..176)."""
    match = _VERSION_RANGE.match(text.strip("\0"))
    if not match:
        raise FrameError(f"not a TWS API version range: {text[:40]!r}")
    low = int(match.group(1))
    high = int(match.group(2) or low)
    return VersionRange(low, high, match.group(3) or "")
