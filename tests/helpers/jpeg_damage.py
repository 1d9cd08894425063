"""Damaged JPEGs for tests: bytes changed, removed or added inside a baseline JPEG's scan data."""

from __future__ import annotations


def scan_data(buf: bytes) -> tuple[int, int]:
    """[start, end) of a baseline JPEG's entropy-coded segment: after the SOS header, before EOI."""
    sos = buf.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(buf[sos + 2 : sos + 4], "big")
    end = buf.rindex(b"\xff\xd9")
    assert start < end
    return start, end


def overwritten(buf: bytes, at: float = 0.5, n: int = 16, before_end: int | None = None) -> bytes:
    """Scan data from fraction ``at`` on (or from ``before_end`` bytes before its end) overwritten by
    ``n`` data bytes 0xFF (stuffed: FF 00): 8n one bits, which no Huffman code is (JPEG forbids the
    all-ones code)."""
    start, end = scan_data(buf)
    p = start + int((end - start) * at) if before_end is None else end - before_end
    while buf[p - 1] == 0xFF:  # do not split a stuffed FF 00
        p += 1
    return buf[:p] + b"\xff\x00" * n + buf[p + 2 * n :]


def cut(buf: bytes) -> bytes:
    """The middle third of the scan data removed (EOI kept): the decoder meets EOI before the last blocks."""
    start, end = scan_data(buf)
    third = (end - start) // 3
    return buf[: start + third] + buf[end - third :]


def truncated(buf: bytes) -> bytes:
    start, end = scan_data(buf)
    return buf[: (start + end) // 2]


def extraneous(buf: bytes) -> bytes:
    """Bytes the decoder does not expect between the end of the scan and EOI (more than its bit buffer
    reads ahead, so that some are left over)."""
    _, end = scan_data(buf)
    return buf[:end] + bytes(range(1, 65)) + buf[end:]
