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
