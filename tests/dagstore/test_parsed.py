"""The server's second look at parse results (`dagstore.parsing.results`), the results pipe's
reader, and `printable`: in process, no server (issue 25)."""

from __future__ import annotations

import json
import os
import threading
from datetime import timedelta

import pytest

from dagstore.authoring.dag import DAG, collecting
from dagstore.authoring.task import task
from dagstore.core.terminal import printable
from dagstore.parsing.parser import MAX_RECORD_BYTES, RecordTooLarge, Results
from dagstore.parsing.results import InvalidDag, check_dag, check_file


def honest_dags() -> list[DAG]:
    """DAGs as authors write them, every kind of schedule and option."""
    with collecting() as found:
        for schedule in (None, "@daily", "*/5 * * * *", "@once", timedelta(minutes=90)):
            with DAG(
                f"d_{len(found)}",
                schedule=schedule,
                start_date="2026-01-01T06:30:00+02:00",
                end_date="2027-01-01",
                catchup=True,
                max_active_runs=3,
                tags=["etl", "ünïcode"],
                description="two\nlines\twith a tab",
                default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "queue": "q-1"},
            ):

                @task(timeout=600, task_id="extract.eu")
                def extract():
                    return 1

                @task(retries=0, timeout=None)
                def load(*parts):
                    return len(parts)

                load(*(extract.override(task_id=f"part_{i}")() for i in range(5)))
    return found


@pytest.mark.parametrize("index", range(5))
def test_every_honest_dag_passes_unchanged(index):
    """No false alarm: what `to_structure` writes (through JSON, as the pipe carries it)
    passes, and the hash the store computes is the one the DAG computes."""
    dag = honest_dags()[index]
    raw = json.loads(json.dumps(dag.to_structure() | {"structure_hash": dag.structure_hash()}))
    assert check_dag(raw) == raw
    assert check_dag(raw | {"fileloc": "dags/x.py"})["fileloc"] == "dags/x.py"


def test_a_forged_hash_is_replaced_not_trusted():
    dag = honest_dags()[0]
    raw = json.loads(json.dumps(dag.to_structure() | {"structure_hash": "0" * 64}))
    assert check_dag(raw)["structure_hash"] == dag.structure_hash()


@pytest.mark.parametrize("bad", [None, [], "dag", {"dag_id": "x"}, {"dag_id": 3}])
def test_what_is_not_a_dag_is_invalid(bad):
    with pytest.raises(InvalidDag):
        check_dag(bad)


def test_a_file_record_is_its_dags_or_its_error():
    dags, error = check_file("dags/a.py", {"dags": "many"})
    assert dags == [] and error is not None and "invalid record" in error.summary
    dags, error = check_file("dags/a.py", {"dags": [{}] * 1001})
    assert dags == [] and error is not None and "1001 DAGs" in error.summary
    dags, error = check_file("dags/a.py", {"summary": 7, "error": ["x"]})
    assert error is not None and error.summary == "7" and error.error == "7"
    dags, error = check_file("dags/a.py", {"summary": "x" * 5000, "error": "\x1b" * 300_000})
    assert error is not None and len(error.summary) == 1000 and len(error.error) <= 256 * 1024
    assert "\x1b" not in error.error


def test_printable_writes_controls_out_and_keeps_text():
    assert printable("plain, é, 日本, emoji 🎉") == "plain, é, 日本, emoji 🎉"
    assert printable("a\x1b[31mb\x07\x9b\u202e\x00") == "a\\x1b[31mb\\x07\\x9b\\u202e\\x00"
    assert printable("l1\n\tl2\r", lines=True) == "l1\n\tl2\\x0d"
    assert printable("l1\n\tl2") == "l1\\x0a\\x09l2"
    once = printable("\x1b]0;t\x07")
    assert printable(once) == once  # idempotent: safe to apply at every layer


def test_the_results_pipe_reader_frames_lines_across_reads_and_caps_them():
    read_end, write_end = os.pipe()
    records = [{"start": "a.py"}, {"file": "a.py", "dags": [], "text": "x" * 200_000}]
    data = b"junk\n" + b"".join(json.dumps(r).encode() + b"\n" for r in records)

    def writer() -> None:
        for i in range(0, len(data), 7777):  # lines split across many reads
            os.write(write_end, data[i : i + 7777])
        os.close(write_end)

    thread = threading.Thread(target=writer)
    thread.start()
    got = []
    with Results(read_end) as results:
        while not results.ended:
            got += results.read(1.0)
    thread.join()
    assert got == records
    read_end, write_end = os.pipe()
    with Results(read_end) as results:
        flood = threading.Thread(target=lambda: _flood(write_end))
        flood.start()
        with pytest.raises(RecordTooLarge):
            while not results.ended:
                results.read(1.0)
    flood.join()


def _flood(fd: int) -> None:
    """More than a record may be, with no line break: the reader stops before holding it."""
    chunk = b"x" * (1 << 20)
    try:
        for _ in range((MAX_RECORD_BYTES >> 20) + 2):
            os.write(fd, chunk)
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"retries": 1001}, "retries must be at most 1000"),
        ({"retry_delay": float("nan")}, "retry_delay must be at most"),
        ({"timeout": timedelta(days=4000)}, "timeout must be at most"),
        ({"max_active_runs": 10_001}, "max_active_runs must be at most 10000"),
        ({"schedule": timedelta(days=40_000)}, "at most 36600 days"),
    ],
)
def test_an_author_meets_the_stores_bounds_at_import(options, why):
    """The bounds the store checks again fail at import already, naming the DAG."""
    from dagstore.core.errors import DagDefinitionError

    dag_options = {k: options.pop(k) for k in ("max_active_runs", "schedule") if k in options}
    with (
        pytest.raises(DagDefinitionError, match=why),
        collecting(),
        DAG("bounded", start_date="2026-01-01", **dag_options),
    ):

        @task(**options)
        def t():
            return 1

        t()
