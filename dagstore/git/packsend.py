"""Sending a pack to a cloning or fetching client by copying entries out of the stored packs.

dulwich builds every pack it sends object by object: a whole object is read, decompressed and
compressed again (a 50 MB file costs ~180 MB of memory and two passes of zlib). The packs in
pinflow's cache already hold every object compressed, so, as git itself does, this writes
each entry's bytes as they are: whole objects and ref-deltas verbatim, offset-deltas with
their header rewritten to name the base by id (the compressed delta stays as it is), in
pieces of at most PIECE bytes. A delta whose base the client will not have is sent whole,
through dulwich. The result is checked by the client like any pack (its trailing sha1, every
object's id). Entries are read from the file each pack holds open
(`dagstore.git.packcache.HeldPack`), never by name: another process may have evicted the cache
file meanwhile.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence

from dulwich.object_format import ObjectFormat
from dulwich.pack import (
    OFS_DELTA,
    REF_DELTA,
    pack_header_chunks,
    pack_object_header,
    write_pack_from_container,
)

from dagstore.git.packcache import HeldPack

PIECE = 1024 * 1024
HEADER_MAX = 64  # a pack entry's header is far shorter (type, size, base offset or id)


class _Entries:
    """One stored pack's entries: where each starts and ends, and which id is where."""

    def __init__(self, pack: HeldPack) -> None:
        self.pack = pack
        rows = sorted((offset, sha) for sha, offset, _crc in pack.index.iterentries())
        self.offsets = [offset for offset, _ in rows]
        self.id_at = {offset: sha for offset, sha in rows}
        self.fd = pack.file.fileno()
        self.data_end = os.fstat(self.fd).st_size - 20  # the trailing checksum

    def read(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def span(self, offset: int) -> tuple[int, int]:
        i = bisect.bisect_right(self.offsets, offset)
        end = self.offsets[i] if i < len(self.offsets) else self.data_end
        return offset, end


def _parse_header(head: bytes) -> tuple[int, int, int, int | bytes | None]:
    """(type, size, header length, base offset distance or base id) of a pack entry."""
    c = head[0]
    kind = (c >> 4) & 7
    size = c & 15
    shift, i = 4, 1
    while c & 0x80:
        c = head[i]
        size |= (c & 0x7F) << shift
        shift += 7
        i += 1
    base: int | bytes | None = None
    if kind == OFS_DELTA:
        c = head[i]
        i += 1
        distance = c & 0x7F
        while c & 0x80:
            c = head[i]
            i += 1
            distance = ((distance + 1) << 7) | (c & 0x7F)
        base = distance
    elif kind == REF_DELTA:
        base = head[i : i + 20]
        i += 20
    return kind, size, i, base


def stream_pack(
    write: Callable[[bytes], object],
    packs: list[HeldPack],
    fallback_container: object,
    object_ids: Sequence[tuple[bytes, object]],
    object_format: ObjectFormat,
) -> None:
    """Write a pack of `object_ids` (hex ids with dulwich's hints) to `write`."""
    entries = [_Entries(pack) for pack in packs]
    sending = {bytes.fromhex(oid.decode()) for oid, _hint in object_ids}
    planned: list[tuple[_Entries, int]] = []
    whole: list[tuple[bytes, object]] = []
    for oid, hint in object_ids:
        raw = bytes.fromhex(oid.decode())
        where = _locate(entries, raw)
        if where is None:
            whole.append((oid, hint))
        else:
            planned.append(where)
    digest = object_format.new_hash()

    def out(data: bytes) -> None:
        digest.update(data)
        write(data)

    # Entries whose base the client lacks are sent whole, by dulwich, after the others.
    resolved = []
    for source, offset in planned:
        kind, size, header_len, base = _parse_header(source.read(HEADER_MAX, offset))
        base_id = None
        if kind == OFS_DELTA:
            base_id = source.id_at.get(offset - int(base))  # type: ignore[arg-type]
        elif kind == REF_DELTA:
            base_id = base
        if base_id is not None and base_id not in sending:
            whole.append((source.id_at[offset].hex().encode(), None))
            continue
        resolved.append((source, offset, kind, size, header_len, base_id))
    for chunk in pack_header_chunks(len(resolved) + len(whole)):
        out(chunk)
    for source, offset, kind, size, header_len, base_id in resolved:
        start, end = source.span(offset)
        if kind == OFS_DELTA:
            out(bytes(pack_object_header(REF_DELTA, base_id, size, object_format)))
            start += header_len
        while start < end:
            piece = source.read(min(PIECE, end - start), start)
            if not piece:
                raise OSError(f"pack {source.pack.name().decode()} ended early")
            out(piece)
            start += len(piece)
    if whole:
        _write_whole(out, fallback_container, whole, object_format)
    write(digest.digest())


def _write_whole(out, container, object_ids, object_format) -> None:
    """dulwich writes these objects (a pack of its own, whose header and trailer we drop)."""
    chunks: list[bytes] = []
    write_pack_from_container(
        chunks.append, container, object_ids, object_format=object_format, reuse_deltas=False
    )
    body = b"".join(chunks)[12:-20]
    out(body)


def _locate(entries: list[_Entries], raw: bytes) -> tuple[_Entries, int] | None:
    for source in entries:
        try:
            return source, source.pack.index.object_offset(raw)
        except KeyError:
            continue
    return None


def install() -> None:
    """Have dulwich's upload-pack send packs this way for pinflow's object store (dulwich
    calls `write_pack_from_container` from its handler; other stores keep dulwich's own)."""
    import dulwich.server

    from dagstore.git.packs import DatabaseObjectStore

    original = write_pack_from_container

    def write_pack(write, container, object_ids, object_format, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(container, DatabaseObjectStore) and not kwargs:
            stream_pack(write, container.packs, container, object_ids, object_format)
            return None
        return original(write, container, object_ids, object_format=object_format, **kwargs)

    dulwich.server.write_pack_from_container = write_pack  # type: ignore[assignment]
