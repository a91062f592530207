"""Reading tar shards: the 512-byte headers walked directly, members grouped into records.

Python's ``tarfile`` builds a ``TarInfo`` object from every header through several layers of file
objects; on shards of small members that cost more than decoding the images. This reader handles
what tar writers put into shards: ustar, GNU and PAX headers, PAX and GNU long names, gzip, bzip2
and xz compression; a broken archive stops with a ``TarFormatError`` that names the file, the byte
offset and whether the file ended early (``truncated_shard``) or holds something malformed
(``corrupt_shard``). Only regular files become members; directories, links and device entries are
passed over, PAX global headers are checked and ignored, GNU sparse files are an error.

Records follow webdataset's layout: consecutive members ``KEY.FIELD`` with the same ``KEY`` make
one record ``{"__key__": KEY, "__url__": path, FIELD: bytes, ...}``; the key is the member's path up
to the first dot of its last component, the field the rest, lower-cased (webdataset's rule, with
its corner cases: ``d/.x`` is key ``d/``, field ``x``); names without such a dot and ``__meta__``
names are passed over.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import re
import zlib
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterator

from configs.errors import VisageError

BLOCK = 512
READ_BUFFER = 1 << 16  # bytes read from the file at a time
ZERO_BLOCK = bytes(BLOCK)
# type flags (the header's byte 156), as the ints that indexing bytes gives
REGULAR_TYPES = frozenset(b"0\x007")  # file, old-style file, contiguous file
LINK_TYPES = frozenset(b"123456")     # hard/symbolic link, devices, directory, fifo: no data
PAX_HEADER, PAX_GLOBAL, GNU_LONG_NAME, GNU_LONG_LINK, GNU_SPARSE = b"xgLKS"
COMPRESSED = ((b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f)), (b"BZh", bz2.BZ2File),
              (b"\xfd7zXZ\x00", lzma.LZMAFile))  # (first bytes, reader over the raw file)
READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)  # decompressors raise these on bad input
META_NAME = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, never sample fields
KEY_AND_FIELD = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's split: "dir/key.field.ext"


class TarFormatError(VisageError, ValueError):
    """A tar archive that cannot be read on: ``kind`` is ``truncated_shard`` or ``corrupt_shard``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@contextmanager
def open_tar(path: str) -> Iterator[BinaryIO]:
    """The file, buffered, through a decompressor when its first bytes say it is compressed."""
    with open(path, "rb", buffering=READ_BUFFER) as raw:
        start = raw.peek(6)[:6]
        decompressor = next((make for magic, make in COMPRESSED if start.startswith(magic)), None)
        if decompressor is None:
            yield raw
            return
        with decompressor(raw) as f:
            yield f


def checksum_ok(block: bytes) -> bool:
    """The header checksum: the sum of its bytes with the checksum field counted as 8 spaces
    (unsigned bytes; signed bytes, as some old tars wrote it, are accepted too)."""
    field = block[148:156]
    try:
        stored = int(field.split(b"\0", 1)[0], 8)
    except ValueError:  # empty or not octal
        return False
    # Adler-32's low half is 1 + the byte sum modulo 65521, computed in C: exact for 256 bytes,
    # whose sum is at most 65,280; the field's 8 bytes are taken out and 8 spaces (256) put in
    unsigned = (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) \
        - (zlib.adler32(field) & 0xFFFF) + 255
    if stored == unsigned:
        return True
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    return stored == signed


def header_number(field: bytes) -> int:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256 (high bit set)."""
    if field[0] & 0x80:
        if field[0] & 0x40:
            raise ValueError("negative base-256 number")
        return int.from_bytes(bytes([field[0] & 0x3F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def header_name(block: bytes) -> str:
    """The member name, with the ustar prefix field in front when the header is POSIX ustar."""
    name = block[:100].split(b"\0", 1)[0]
    if block[345] and block[257:263] == b"ustar\x00":
        name = block[345:500].split(b"\0", 1)[0] + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def pax_records(data: bytes) -> dict[str, str]:
    """The ``LENGTH KEY=VALUE\\n`` records of a PAX header; ValueError when malformed."""
    records, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        record = data[space + 1:pos + length]
        if length <= space - pos or not record.endswith(b"\n") or b"=" not in record:
            raise ValueError(f"bad record at {pos}")
        key, value = record[:-1].split(b"=", 1)
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def tar_members(f: BinaryIO, path: str) -> Iterator[tuple[str, bytes]]:
    """(name, data) of every regular file in the archive, in order. The archive ends at its first
    zero block or at the end of the file on a header boundary (a cut there reads as a shorter valid
    archive: the caller compares counts). This loop runs for every member of every shard: type flags
    are compared as ints, and a member's data is read and checked in place."""
    offset, long_name, pax = 0, None, {}
    read = f.read
    while True:
        block = read(BLOCK)
        if len(block) != BLOCK or block == ZERO_BLOCK:
            if not block.strip(b"\0"):
                return
            raise TarFormatError("truncated_shard", f"{path}: ends inside a header at byte {offset}")
        if not checksum_ok(block):
            raise TarFormatError("corrupt_shard", f"{path}: bad header checksum at byte {offset}")
        kind = block[156]
        try:
            size = int(pax["size"]) if "size" in pax else header_number(block[124:136])
        except ValueError as err:
            raise TarFormatError("corrupt_shard", f"{path}: bad size field at byte {offset} ({err})") from None
        if kind in LINK_TYPES:
            size = 0
        elif kind == GNU_SPARSE:
            raise TarFormatError("corrupt_shard", f"{path}: GNU sparse member at byte {offset} is not supported")
        padded = -(-size // BLOCK) * BLOCK
        data = read(padded)
        if len(data) != padded:
            raise TarFormatError("truncated_shard", f"{path}: ends inside a member at byte "
                                                    f"{offset + BLOCK + len(data)} ({padded - len(data)} bytes missing)")
        if size != padded:
            data = data[:size]
        if kind in REGULAR_TYPES:
            yield (long_name or pax.get("path") or header_name(block)), data
            long_name, pax = None, {}
        elif kind in (PAX_HEADER, PAX_GLOBAL):
            try:
                records = pax_records(data)
            except ValueError as err:
                raise TarFormatError("corrupt_shard", f"{path}: malformed PAX header at byte {offset} "
                                                      f"({err})") from None
            pax = records if kind == PAX_HEADER else {}
        elif kind == GNU_LONG_NAME:
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind != GNU_LONG_LINK:
            long_name, pax = None, {}
        offset += BLOCK + padded


def member_key(name: str) -> tuple[str, str] | None:
    """(sample key, field) of a member name, or None for names that belong to no sample."""
    if "/" not in name and not name.startswith("__"):  # the common case, without the regex
        dot = name.find(".")
        return (name[:dot], name[dot + 1:].lower()) if dot > 0 else None
    if name.startswith("__") and META_NAME.match(name):
        return None
    match = KEY_AND_FIELD.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def tar_records(path: str, report: Callable[..., None]) -> Iterator[dict]:
    """The records of one tar file, in file order. Problems go to ``report(kind, message, key)``:
    a repeated field (``key`` names the sample; the repeat is dropped, the sample kept) and a broken
    archive (``key`` None; reading stops; the record being assembled is still yielded, incomplete
    records fail later as samples). A compressed stream that ends early is ``truncated_shard``."""
    record: dict | None = None
    try:
        with open_tar(path) as f:
            for name, data in tar_members(f, path):
                parts = member_key(name)
                if parts is None:
                    continue
                key, field = parts
                if record is None or key != record["__key__"]:
                    if record is not None:
                        yield record
                    record = {"__key__": key, "__url__": path}
                if field in record:
                    report("corrupt_shard", f"{path}: sample {key!r} has a second {field!r} member", key)
                    continue
                record[field] = data
    except TarFormatError as err:
        report(err.kind, str(err), None)
    except EOFError as err:  # gzip, bz2 and xz: the compressed stream ends before its end marker
        report("truncated_shard", f"{path}: compressed stream ends early ({err})", None)
    except READ_ERRORS as err:
        report("corrupt_shard", f"{path}: cannot be read ({err!r})", None)
    if record is not None:
        yield record
