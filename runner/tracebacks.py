"""A failed task's traceback as its author wants to read it: from their own code down.

Every task is called through pinflow's frames (`runner.execute`, the authoring model's
`Task.call`), written with the paths of wherever pinflow is installed. The task's log shows
the traceback from the first frame that is not pinflow's own; the try's `error` keeps the
whole one (`pinflow logs --verbose` prints it), for whoever debugs pinflow itself.
"""

from __future__ import annotations

import importlib.util
import traceback
from functools import cache
from pathlib import Path
from types import TracebackType

OWN_PACKAGES = ("dagstore", "pinflow", "runner")


@cache
def _own_folders() -> tuple[str, ...]:
    """Where pinflow's packages are installed (looked up, not imported: runner stays below)."""
    folders = []
    for name in OWN_PACKAGES:
        spec = importlib.util.find_spec(name)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            folders.append(str(Path(folder).resolve()) + "/")
    return tuple(folders)


def _ours(tb: TracebackType) -> bool:
    return str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(_own_folders())


def full(exc: BaseException, version_root: Path) -> str:
    """Every frame; the version's folder left out of its paths (`dags/etl.py`)."""
    return "".join(traceback.format_exception(exc)).replace(f"{version_root}/", "")


def users(exc: BaseException, version_root: Path) -> str:
    """From the first frame that is not pinflow's own (all of them if none is)."""
    tb = exc.__traceback__
    while tb is not None and _ours(tb):
        tb = tb.tb_next
    if tb is None:
        return full(exc, version_root)
    shown = "".join(traceback.format_exception(type(exc), exc, tb))
    return shown.replace(f"{version_root}/", "")
