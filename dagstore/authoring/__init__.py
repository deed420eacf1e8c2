"""The model DAG files import (`from pinflow import DAG, task`): DAGs, tasks, schedules.

Every DAG file imports it, on every worker and in every parse, so it stays cheap: standard
library and `dagstore.core.errors` only, never the database, git or HTTP.
"""
