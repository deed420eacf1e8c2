"""The store's HTTP routes, one module per noun; the app mounts `router` under /api/v1."""

from fastapi import APIRouter

from dagstore.api import dags, repos
from dagstore.api.repos import healthz

router = APIRouter()
router.include_router(repos.router)
router.include_router(dags.router)

__all__ = ["healthz", "router"]
