"""What the store's routes answer, as typed models: the OpenAPI document's response schemas.

The routes keep building plain dicts (the web UI calls them in process and reads dicts); each
route names its model here as its `response_model`, so FastAPI checks every answer against it
and the published schema is the one answers are checked against. `extra="forbid"`: a field a
builder adds without declaring it here fails loudly in tests (a 500 from FastAPI's response
check) instead of going out undocumented or being dropped on the way out. DESIGN.md's field
names are fixed; new fields are welcome, declared here first.
"""

from __future__ import annotations

from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema

# The database clock's time in UTC, ISO 8601 (`2026-12-02T18:40:50.123456Z`).
Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
Sha = Annotated[str, StringConstraints(pattern="^[0-9a-f]{40}$")]

T = TypeVar("T")


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Items(Shape, Generic[T]):
    """Every list the API answers: `{"items": [...]}` (DESIGN.md)."""

    items: list[T]


class Health(Shape):
    status: Literal["ok", "database unreachable"]


class Repo(Shape):
    name: str
    track: str = Field(description="the branch whose tip defines the repository's DAGs")
    strict: bool = Field(description="pushes whose DAG files fail to parse are refused")
    created_at: Timestamp | None
    git_url: str = Field(description="where `git push` goes")


class Refs(Shape):
    refs: dict[str, Sha] = Field(description="branch and tag names (`refs/heads/main`) → sha")


class Resolved(Shape):
    sha: Sha


class FileError(Shape):
    """A DAG file of a version that failed to parse."""

    file: str = Field(description="repo-relative path")
    error: str = Field(description="one line: the exception and where")
    traceback: str = Field(description="the whole traceback, repo-relative paths")


class Version(Shape):
    """A pushed commit as the store parsed it."""

    sha: Sha
    ref: str = Field(description="the ref it was pushed to")
    pushed_at: Timestamp | None
    committed_at: Timestamp | None
    author: str
    message: str
    parse_state: Literal["pending", "parsed"]
    dags: list[str] = Field(description="ids of the DAGs it defines")
    errors: list[FileError]


class BrokenDagFile(FileError):
    """A broken DAG file at a repository's tracked tip."""

    repo: str
    sha: Sha


class MappedArgument(Shape):
    arg: str
    task: str | None = Field(default=None, description="the upstream whose list it maps over")
    length: int | None = Field(default=None, description="a literal list's length")


class DagTask(Shape):
    task_id: str
    upstream: list[str]
    retries: int
    retry_delay: float | None
    timeout: float | None
    queue: str | None
    trigger_rule: str = "all_success"
    pool: str | None = None
    branch: bool = Field(default=False, description="a @task.branch task")
    mapped: list[MappedArgument] | None = Field(
        default=None, description="what expand() maps over, one entry per argument"
    )


class StructureChange(Shape):
    """A version in which the DAG's structure (tasks, dependencies, settings) changed."""

    sha: Sha
    pushed_at: Timestamp | None
    structure_hash: str


class Dag(Shape):
    dag_id: str
    repo: str
    fileloc: str = Field(description="repo-relative path of the file that defines it")
    current_sha: Sha | None = Field(description="the version new runs are pinned to")
    schedule: str | None
    is_paused: bool
    is_active: bool = Field(description="false once the tracked tip no longer defines it")
    next_due_at: Timestamp | None = Field(
        description="when the next scheduled run is due; null: not computed yet or no more ticks"
    )
    schedule_ended: bool = Field(description="no ticks left (@once done, past end_date)")
    description: str
    tags: list[str]
    timezone: str = Field(default="UTC", description="the zone cron schedules tick in")
    dagrun_timeout: float | None = None
    max_active_tasks: int | None = None
    structure_hash: str
    tasks: list[DagTask]
    last_error: str | None
    updated_at: Timestamp | None


class DagDetail(Dag):
    versions: list[StructureChange] = Field(description="newest first")


class TaskChange(Shape):
    dag_id: str
    change: Literal["added", "removed", "changed"]
    tasks_added: list[str] = Field(default_factory=list)
    tasks_removed: list[str] = Field(default_factory=list)
    tasks_changed: dict[str, list[str]] = Field(
        default_factory=dict, description="task id → the settings that changed"
    )
    settings_changed: list[str] = Field(default_factory=list)


class FileDiff(Shape):
    path: str
    status: Literal["added", "deleted", "modified", "renamed"]
    old_path: str | None = Field(default=None, description="only for a rename")
    binary: bool
    patch: str = Field(description="unified diff")
    truncated: bool = Field(description="the patch was cut at its size limit")


class Diff(Shape):
    base: Sha
    head: Sha
    files: list[FileDiff]
    files_truncated: bool = Field(description="more files differ than are listed")
    dags: list[TaskChange]


class TreeFile(Shape):
    path: str
    size: int


class Tree(Shape):
    sha: Sha
    files: list[TreeFile]


# The lists, named (rather than `Items_Repo_`) in the OpenAPI document.
class RepoList(Items[Repo]):
    pass


class VersionList(Items[Version]):
    pass


class DagList(Items[Dag]):
    pass


class BrokenDagFileList(Items[BrokenDagFile]):
    pass
