"""What a parse hands back, checked again by the server before anything of it is kept.

The parse child runs pushed code in the very process that reports on it, so its report is
the pusher's to write: a DAG file can change its DAG after `DAG()` checked it
(`dag.dag_id = "zz/../payroll"`), write lines of its own into the results pipe, or fill its
error text with terminal escapes. So the server takes nothing on trust:
- every DAG is checked against the rules `DAG()` and `@task` apply (ids, options, schedule,
  dates; task ids unique; tasks in topological order, which also proves the graph acyclic),
  with strict types, unknown fields refused, and sizes and counts bounded; its structure hash
  is computed again here. A file with one DAG that fails is an error of that file, none of its
  DAGs kept (as for any broken file, its DAGs stay at their last good version);
- an error text is kept, but with control characters written out and cut to size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from dagstore.authoring.dag import MAX_ACTIVE_RUNS, MAX_ACTIVE_TASKS, structure_hash
from dagstore.authoring.mapping import MAX_LITERAL
from dagstore.authoring.options import ID_PATTERN, MAX_RETRIES, MAX_SECONDS
from dagstore.authoring.rules import TRIGGER_RULES
from dagstore.authoring.schedule import as_utc, schedule_from_json
from dagstore.authoring.wallclock import check_timezone
from dagstore.core.errors import DagDefinitionError
from dagstore.core.terminal import printable

MAX_DAGS_PER_FILE = 1000
MAX_TASKS = 10_000
MAX_SUMMARY = 1000  # characters of a file's one-line error
MAX_ERROR = 256 * 1024  # characters of its traceback
LATEST_YEAR = 9000  # dates the scheduler can still add intervals to


# Patterns pydantic checks in its own (Rust) regex engine: a push's hundreds of DAGs and
# thousands of tasks cost well under a millisecond each (`check_dag` words its failures).
ID = f"^{ID_PATTERN.pattern}$"
_CONTROLS = "\\x7f-\\x9f\\u202a-\\u202e\\u2066-\\u2069"  # and C0, as dagstore.core.terminal
NO_CONTROLS = f"^[^\\x00-\\x1f{_CONTROLS}]*$"
NO_CONTROLS_BUT_LINES = f"^[^\\x00-\\x08\\x0b-\\x1f{_CONTROLS}]*$"

Id = Annotated[str, StringConstraints(pattern=ID)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=250, pattern=NO_CONTROLS)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class InvalidDag(ValueError):
    """A DAG as reported by a parse breaks a rule; the message says which."""


def _date(value: str | None) -> str | None:
    """An aware UTC ISO datetime, as `DAG.to_structure` writes it."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)  # ValueError: not ISO
    if parsed.tzinfo is None or as_utc(parsed).isoformat() != value:
        raise ValueError(f"{value!r} is not a UTC ISO datetime with its offset")
    if parsed.year >= LATEST_YEAR:
        raise ValueError(f"{value!r} is after the year {LATEST_YEAR}")
    return value


@lru_cache(maxsize=4096)
def _schedule(text: str | None) -> str | None:
    """The stored form of a schedule the scheduler can rebuild (cron checks cost ~2 ms: a
    repo's few schedules are checked once per server)."""
    try:
        canonical = schedule_from_json(text).to_json()
    except DagDefinitionError as exc:
        raise ValueError(exc.detail) from None
    if canonical != text:
        raise ValueError(f"schedule {text!r} is not in its stored form {canonical!r}")
    return text


def _timezone(name: str) -> str:
    try:
        return check_timezone(name)
    except DagDefinitionError as exc:
        raise ValueError(exc.detail) from None


IsoDate = Annotated[str | None, AfterValidator(_date)]
Timezone = Annotated[str, StringConstraints(max_length=100), AfterValidator(_timezone)]
TriggerRule = Literal[TRIGGER_RULES]  # type: ignore[valid-type]
StoredSchedule = Annotated[str | None, StringConstraints(max_length=250), AfterValidator(_schedule)]


class MappedArg(BaseModel):
    """One argument of `expand(...)`: over an upstream task's result, or a literal list."""

    model_config = _STRICT

    arg: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,249}$")]
    task: Id | None = None
    length: int | None = Field(default=None, ge=0, le=MAX_LITERAL)


class TaskRecord(BaseModel):
    model_config = _STRICT

    task_id: Id
    upstream: list[Id] = Field(max_length=MAX_TASKS)
    retries: int = Field(ge=0, le=MAX_RETRIES)
    retry_delay: Seconds  # the bounds of `dagstore.authoring.task.check_options`
    timeout: Annotated[float, Field(gt=0, le=MAX_SECONDS)] | None
    queue: Name
    function: Name
    # Newer options: absent when at their default, so older structures keep their hash.
    pool: Id | None = None
    trigger_rule: TriggerRule = "all_success"
    branch: bool = False
    on_failure: Name | None = None
    mapped: list[MappedArg] | None = Field(default=None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _mapped(self) -> TaskRecord:
        for entry in self.mapped or []:
            if entry.task is not None and entry.task not in self.upstream:
                raise ValueError(f"mapped argument {entry.arg!r} maps over {entry.task!r}, "
                                 "which is not upstream of it")  # fmt: skip
            if (entry.task is None) == (entry.length is None):
                raise ValueError(f"mapped argument {entry.arg!r} needs a task or a length")
        return self


class DagRecord(BaseModel):
    """One DAG as `DAG.to_structure` writes it (plus its hash, and its file once collected)."""

    model_config = _STRICT

    dag_id: Id
    schedule: StoredSchedule
    start_date: IsoDate
    end_date: IsoDate
    catchup: bool
    max_active_runs: int = Field(ge=1, le=MAX_ACTIVE_RUNS)
    tags: list[Name] = Field(max_length=100)
    description: Annotated[str, StringConstraints(max_length=10_000, pattern=NO_CONTROLS_BUT_LINES)]
    tasks: list[TaskRecord] = Field(max_length=MAX_TASKS)
    timezone: Timezone = "UTC"
    on_failure: Name | None = None
    dagrun_timeout: Annotated[float, Field(gt=0, le=MAX_SECONDS)] | None = None
    max_active_tasks: int | None = Field(default=None, ge=1, le=MAX_ACTIVE_TASKS)
    structure_hash: Annotated[str, StringConstraints(max_length=64)] | None = None
    fileloc: Annotated[str, StringConstraints(max_length=4096)] | None = None

    @model_validator(mode="after")
    def _graph(self) -> DagRecord:
        if self.schedule is not None and self.start_date is None:
            raise ValueError(f"a scheduled DAG needs a start_date (schedule {self.schedule!r})")
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        seen: set[str] = set()
        for task in self.tasks:
            if task.task_id in seen:
                raise ValueError(f"task_id {task.task_id!r} appears twice")
            missing = [u for u in task.upstream if u not in seen]
            if missing:  # unknown, or not before it: a cycle, or not in topological order
                raise ValueError(
                    f"task {task.task_id!r}: upstream {missing[0]!r} is not a task listed "
                    "before it (unknown task, or a cycle)"
                )
            seen.add(task.task_id)
        return self

    @model_validator(mode="after")
    def _branches(self) -> DagRecord:
        below = {t.task_id: 0 for t in self.tasks}
        for task in self.tasks:
            for up in task.upstream:
                below[up] += 1
        for task in self.tasks:
            if task.branch and task.mapped:
                raise ValueError(f"task {task.task_id!r}: a branch task cannot be mapped")
            if task.branch and not below[task.task_id]:
                raise ValueError(f"@task.branch {task.task_id!r} has no downstream task")
        return self


def check_dag(raw: Any) -> dict[str, Any]:
    """The DAG `raw` as the store keeps it (its hash computed here), or InvalidDag."""
    try:
        record = DagRecord.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the DAG"
        message = _said(first)
        dag_id = raw.get("dag_id") if isinstance(raw, dict) else None
        named = f"DAG {dag_id!r}: " if isinstance(dag_id, str) and len(dag_id) <= 250 else ""
        raise InvalidDag(printable(f"{named}{where}: {message}")[:MAX_SUMMARY]) from None
    structure = record.model_dump(exclude={"structure_hash", "fileloc"}, exclude_unset=True)
    for task in structure["tasks"]:  # what a DAG file leaves out stays out (see TaskRecord)
        for entry in task.get("mapped") or []:
            for key in [k for k, v in entry.items() if v is None]:
                del entry[key]
    kept = structure | {"structure_hash": structure_hash(structure)}
    return kept if record.fileloc is None else kept | {"fileloc": record.fileloc}


def _said(error: Any) -> str:
    """pydantic's message, in the words of the authoring rules where it names a pattern."""
    if error["type"] != "string_pattern_mismatch":
        return error["msg"].removeprefix("Value error, ")
    value = printable(str(error["input"])[:300])
    if error["ctx"]["pattern"] == ID:
        return (
            f"invalid id {value!r} (letters, digits, '_', '.', '-'; not starting with '.' "
            "or '-'; at most 250 characters)"
        )
    return f"{value!r} holds control characters"


@dataclass(frozen=True)
class FileError:
    file: str
    summary: str
    error: str

    @classmethod
    def of(cls, file: str, summary: object, error: object = None) -> FileError:
        """An error as a parse reported it: any text, made printable and cut to size."""
        line = summary if isinstance(summary, str) else repr(summary)[:MAX_SUMMARY]
        one_line = printable(line[:MAX_SUMMARY])[:MAX_SUMMARY]
        text = error[:MAX_ERROR] if isinstance(error, str) else one_line
        return cls(file, one_line, printable(text, lines=True)[:MAX_ERROR])


def check_file(file: str, record: Any) -> tuple[list[dict[str, Any]], FileError | None]:
    """What the parse said of one DAG file: its DAGs, all checked, or the file's error."""
    if not isinstance(record, dict):
        return [], FileError.of(file, "the parse returned no record for this file")
    if record.get("summary") or record.get("error"):
        return [], FileError.of(file, record.get("summary") or "error", record.get("error"))
    dags = record.get("dags")
    if not isinstance(dags, list):
        return [], FileError.of(file, "the parse returned an invalid record for this file")
    if len(dags) > MAX_DAGS_PER_FILE:
        return [], FileError.of(
            file, f"defines {len(dags)} DAGs, more than the {MAX_DAGS_PER_FILE} a file may"
        )
    try:
        return [check_dag(dag) | {"fileloc": file} for dag in dags], None
    except InvalidDag as exc:
        return [], FileError.of(file, f"invalid DAG, not kept: {exc}")
