"""Consolidation: one pack instead of many, holding exactly what the refs reach.

Every push adds a pack, so a busy repo collects packs, and each request looks up objects in
all of them. When a repo has more than MAX_PACKS live packs, the push that crossed the line
writes one pack of everything reachable from the refs (keep refs included, deltas reused as
they are) and deletes the packs it replaces in the same transaction that makes it live. Packs
that arrive meanwhile are not among the replaced ones, so nothing a concurrent push brought is
lost; objects no ref reaches (a push that moved nothing and whose request died before
discarding its pack) go.
"""

from __future__ import annotations

import hashlib
import logging

from dulwich.object_store import BaseObjectStore
from dulwich.objects import ObjectID
from dulwich.pack import Pack
from sqlalchemy import delete, select

from dagstore.gitmodels import GitPack
from dagstore.gitrepo import DatabaseRepo
from dagstore.packstore import DatabaseObjectStore

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


def ref_targets(repo: DatabaseRepo) -> list[ObjectID]:
    """The objects the refs name (peeled or not: tags are objects of their own)."""
    return sorted(set(repo.refs.as_dict().values()))


def consolidate(repo: DatabaseRepo) -> bool:
    """Repack `repo` into one pack if it has too many; True when it did."""
    store = repo.object_store
    with store.db.read() as session:
        old = set(
            session.scalars(
                select(GitPack.id).where(GitPack.repo_id == store.repo_id, GitPack.state == "live")
            )
        )
    if len(old) <= MAX_PACKS:
        return False
    pack = pack_reachable(store, ref_targets(repo), store)
    if pack is not None:  # the same objects may already be one of the old packs: keep it
        old.discard(store.written[pack.name().decode("ascii")])
    with store.db.write() as session:
        session.execute(delete(GitPack).where(GitPack.id.in_(old)))
    log.info("repo %s: %d packs consolidated into one", store.repo_id, len(old))
    return True


_TYPE_NAMES = {1: b"commit", 2: b"tree", 3: b"blob", 4: b"tag"}
