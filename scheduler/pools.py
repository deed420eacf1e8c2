"""Pools: named bounds on how many tasks run at once across DAGs (`@task(pool="warehouse")`).

`pinflow pool set NAME SLOTS` creates or resizes one, `list` shows each with how many of its
slots are taken, `delete` removes it (its tasks then wait until it exists again). Changes
lock the pool's row, the lock `scheduler.limits` counts under, so a resize never interleaves
with a count. Shrinking stops nothing that runs: fewer tasks start until the pool has room.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from dagstore.api.auth import AdminToken, ReadToken, StoreDep
from dagstore.api.shapes import Items, Shape
from dagstore.authoring.options import ID_PATTERN
from dagstore.core.errors import NotFound
from scheduler.models import Pool, TaskInstance

router = APIRouter()
MAX_SLOTS = 1_000_000
PoolName = Annotated[str, Path(pattern=f"^{ID_PATTERN.pattern}$", description="pool name")]


class PoolBody(BaseModel):
    slots: int = Field(ge=0, le=MAX_SLOTS, description="tasks at once; 0 holds them all")
    description: str = Field(default="", max_length=1000)


class PoolShape(Shape):
    name: str
    slots: int
    description: str
    queued: int = Field(description="its tasks queued now")
    running: int = Field(description="its tasks running now")
    open: int = Field(description="slots free")


class PoolList(Items[PoolShape]):
    pass


def pools_json(session: Session, names: list[str] | None = None) -> list[dict[str, Any]]:
    query = select(Pool).order_by(Pool.name)
    if names is not None:
        query = query.where(Pool.name.in_(names))
    pools = session.scalars(query).all()
    used: dict[tuple[str, str], int] = {
        (pool, state): n
        for pool, state, n in session.execute(
            select(TaskInstance.pool, TaskInstance.state, func.count())
            .where(
                TaskInstance.pool.in_([p.name for p in pools]),
                TaskInstance.state.in_(("queued", "running")),
            )
            .group_by(TaskInstance.pool, TaskInstance.state)
        )
    }
    out = []
    for pool in pools:
        queued, running = used.get((pool.name, "queued"), 0), used.get((pool.name, "running"), 0)
        out.append({"name": pool.name, "slots": pool.slots, "description": pool.description,
                    "queued": queued, "running": running,
                    "open": max(pool.slots - queued - running, 0)})  # fmt: skip
    return out


@router.get("/pools", tags=["pools"], response_model=PoolList)
def list_pools(store: StoreDep, _: ReadToken) -> dict[str, Any]:
    """Every pool, with how many of its slots its tasks take now."""
    with store.db.read() as session:
        return {"items": pools_json(session)}


@router.put("/pools/{name}", tags=["pools"], response_model=PoolShape)
def set_pool(name: PoolName, body: PoolBody, store: StoreDep, _: AdminToken) -> dict[str, Any]:
    """Create the pool or change its slots; admin scope (it bounds every DAG's tasks)."""
    with store.db.write() as session:
        pool = session.scalar(select(Pool).where(Pool.name == name).with_for_update())
        if pool is None:
            session.add(Pool(name=name, slots=body.slots, description=body.description))
        else:
            pool.slots, pool.description = body.slots, body.description
        session.flush()
        return pools_json(session, [name])[0]


@router.delete("/pools/{name}", tags=["pools"], response_model=PoolShape)
def delete_pool(name: PoolName, store: StoreDep, _: AdminToken) -> dict[str, Any]:
    """Remove the pool; its tasks wait (scheduled) until a pool of that name exists again."""
    with store.db.write() as session:
        found = pools_json(session, [name])
        if not found:
            raise NotFound(f"no pool {name!r}")
        session.execute(delete(Pool).where(Pool.name == name))
        return found[0]
