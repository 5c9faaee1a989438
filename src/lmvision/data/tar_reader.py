"""Reading the member headers of an uncompressed tar file (ustar, GNU long names, pax), without
the standard library's ``tarfile`` (which reads every member's data to move past it)."""

from __future__ import annotations

import os
from collections.abc import Iterator


class TarFormatError(ValueError):
    """Not a tar file, or a damaged one."""


def tar_members(f) -> Iterator[tuple[str, int, int]]:
    """The regular files of an uncompressed tar file, in order: (name, data offset, size).

    Reads the 512-byte headers only, seeking over the data: ustar (with its name prefix), GNU
    long names and PAX headers (path, size), as tar, Python's tarfile and webdataset's
    TarWriter write them; folders and symbolic links are passed over. Python's tarfile parses
    the same headers several times slower, which shows on shards of many small members.
    Raises :class:`TarFormatError` for what is not a tar file, is cut short, or holds members
    that cannot be read by offset (sparse files, hard links).
    """
    end = os.fstat(f.fileno()).st_size
    offset, overrides, long_name = 0, {}, None
    while True:
        f.seek(offset)
        header = f.read(512)
        if not header or header.count(0) == 512:
            if offset == 0:
                raise TarFormatError("an empty file")
            if overrides or long_name is not None:
                raise TarFormatError(f"cut short after the extended header before byte {offset}")
            return
        if len(header) < 512:
            raise TarFormatError(f"cut short inside the header at byte {offset}")
        try:
            checksum = int(header[148:156].replace(b"\0", b" ").strip(), 8)
            size_field = header[124:136]
            size = int.from_bytes(size_field[1:], "big") if size_field[0] & 0x80 else \
                int(size_field.replace(b"\0", b" ").strip() or b"0", 8)  # base-256: GNU, big
        except ValueError:
            raise TarFormatError(f"no tar header at byte {offset}") from None
        if checksum != sum(header[:148]) + 256 + sum(header[156:]) and checksum != 256 + sum(
                b - 256 if b > 127 else b for b in header[:148] + header[156:]):  # signed, old tars
            raise TarFormatError(f"bad header checksum at byte {offset}")
        kind, data = header[156:157], offset + 512
        if kind in (b"x", b"g", b"L", b"K"):  # extended headers: about the next member
            f.seek(data)
            content = f.read(size)
            if len(content) < size:
                raise TarFormatError(f"cut short inside the header at byte {offset}")
            if kind == b"x":
                overrides = _pax(content, offset)
            elif kind == b"L":
                long_name = content.rstrip(b"\0").decode("utf-8", "replace")
        else:
            size = int(overrides.get("size", size))
            name = overrides.get("path") or long_name
            if name is None:
                name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
                if header[257:263] == b"ustar\0" and header[345]:  # POSIX ustar: a prefix
                    name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
            if kind in (b"S", b"1") or any(k.startswith("GNU.sparse") for k in overrides):
                raise TarFormatError(f"member {name!r} is a {'hard link' if kind == b'1' else 'sparse file'}"
                                     ", which cannot be read by offset; write it as a plain file")
            if kind in (b"0", b"\0", b"7"):
                if data + size > end:
                    raise TarFormatError(f"cut short inside member {name!r}")
                yield name, data, size
            overrides, long_name = {}, None
        offset = data + (size + 511) // 512 * 512


def _pax(content: bytes, offset: int) -> dict[str, str]:
    """The records of a PAX extended header: ``"<length> <key>=<value>\\n"``."""
    out, position = {}, 0
    try:
        while position < len(content) and content[position:position + 1] != b"\0":
            space = content.index(b" ", position)
            length = int(content[position:space])
            if length <= space - position:
                raise ValueError(length)
            key, _, value = content[space + 1:position + length - 1].partition(b"=")
            out[key.decode("utf-8")] = value.decode("utf-8", "replace")
            position += length
    except ValueError:
        raise TarFormatError(f"a damaged PAX header at byte {offset}") from None
    return out
