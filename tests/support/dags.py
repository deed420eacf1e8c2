"""DAG files the end-to-end tests push, written once."""

from __future__ import annotations


def sleeps_on_first_try(dag_id: str, seconds: float, task_id: str = "sleepy") -> str:
    """One task with a retry: try 1 sleeps (to be killed mid-task), try 2 returns at once."""
    return f'''
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task(retries=1, task_id="{task_id}")
    def work(context):
        import time
        if context["try_number"] == 1:
            time.sleep({seconds})
        return context["try_number"]

    work()
'''


# For hostile DAG files: the sockets the process holds, each a fresh duplicate (closed after
# use, the original untouched). Prepended to a DAG file's source, which must not be formatted
# with str.format after it (it has braces of its own).
HELD_SOCKETS = r"""
import os as _os, socket as _socket, stat as _stat


def held_sockets():
    for fd in _os.listdir("/proc/self/fd"):
        try:
            if not _stat.S_ISSOCK(_os.fstat(int(fd)).st_mode):
                continue
            s = _socket.socket(fileno=_os.dup(int(fd)))
        except OSError:
            continue
        with s:
            yield s
"""
