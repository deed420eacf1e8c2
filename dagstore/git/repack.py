"""Consolidation: one pack instead of many.

Every push adds a pack, so a busy repo collects packs, and each request looks up objects in
all of them. When a repo has more than MAX_PACKS live packs, the push that crossed the line
copies every object of those packs into one new pack (entries copied as stored, as
`dagstore.git.packsend` sends them), checks that the new pack's index, computed from content,
holds every one of them, and only then deletes the packs it replaced. It never decides what
is reachable: a concurrent push may be about to point a ref at objects of a pack it just
published, so the new pack keeps everything the old ones had, and packs published meanwhile
are not among the replaced ones.
"""

from __future__ import annotations

import hashlib
import logging

from dulwich.object_store import BaseObjectStore
from dulwich.objects import ObjectID
from dulwich.pack import Pack
from sqlalchemy import delete, select

from dagstore.git.models import GitPack
from dagstore.git.packs import DatabaseObjectStore
from dagstore.git.packsend import stream_pack
from dagstore.git.repo import DatabaseRepo

log = logging.getLogger("pinflow.repack")
MAX_PACKS = 16


class CorruptObject(Exception):
    """An object whose content does not hash to its name."""


def pack_reachable(
    source: BaseObjectStore, wants: list[ObjectID], target: DatabaseObjectStore
) -> Pack | None:
    """Copy everything reachable from `wants` in `source` into one live pack of `target`,
    checking every object's content against its name."""
    if not wants:
        return None
    count, objects = source.generate_pack_data(have=[], want=wants)
    pack = target.add_pack_data(count, objects)
    if pack is None:
        return None
    verify_objects(target, [entry[0].hex().encode() for entry in pack.index.iterentries()])
    return pack


def verify_objects(store: BaseObjectStore, object_ids: list[ObjectID]) -> int:
    """Read every object and hash its content again; raises CorruptObject or KeyError."""
    for object_id in object_ids:
        type_num, raw = store.get_raw(object_id)
        header = b"%s %d\0" % (_TYPE_NAMES[type_num], len(raw))
        if hashlib.sha1(header + raw).hexdigest().encode() != object_id:
            raise CorruptObject(f"object {object_id.decode()} does not match its content")
    return len(object_ids)


def consolidate(repo: DatabaseRepo) -> bool:
    """Repack `repo`'s live packs into one if it has too many; True when it did."""
    store = repo.object_store
    with store.db.read() as session:
        old = dict(
            session.execute(
                select(GitPack.name, GitPack.id).where(
                    GitPack.repo_id == store.repo_id, GitPack.state == "live"
                )
            ).all()
        )
    if len(old) <= MAX_PACKS:
        return False
    store.rescan()
    packs = [pack for name, pack in store.cached_packs() if name in old]
    if len(packs) != len(old):
        return False  # one was consolidated away meanwhile: another server is at it
    ids = {entry[0] for pack in packs for entry in pack.index.iterentries()}
    f, commit, abort = store.add_pack()
    try:
        stream_pack(
            f.write,
            packs,
            store,
            [(sha.hex().encode(), None) for sha in sorted(ids)],
            repo.object_format,
        )
    except BaseException:
        abort()
        raise
    pack = commit()
    assert pack is not None
    held = {entry[0] for entry in pack.index.iterentries()}
    if not ids <= held:
        raise CorruptObject(f"consolidation lost {len(ids - held)} object(s); nothing deleted")
    keep = store.written[pack.name().decode("ascii")]
    with store.db.write() as session:
        for name, pack_id in old.items():  # by id and name: SQLite may reuse a deleted id
            if pack_id != keep:
                session.execute(delete(GitPack).where(GitPack.id == pack_id, GitPack.name == name))
    log.info("repo %s: %d packs consolidated into one", store.repo_id, len(old))
    return True


_TYPE_NAMES = {1: b"commit", 2: b"tree", 3: b"blob", 4: b"tag"}
