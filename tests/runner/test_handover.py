"""A forked horse's finish report, handed to its worker (runner.handover), and what the worker
parent keeps out of its memory so that each fork stays cheap (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys

from runner.handover import SIZE, Handover


def forked(action) -> int:
    """Run `action()` in a forked child; its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            action()
        finally:
            os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_horse_hands_its_report_over_through_shared_memory():
    slot = Handover()
    slot.open()
    try:
        assert slot.take() is None  # nothing handed over yet
        assert forked(lambda: slot.put(b'{"state": "success"}')) == 0
        assert slot.take() == b'{"state": "success"}'
    finally:
        slot.close()
    assert slot.take() is None and not slot.put(b"x")  # closed: no mapping, nothing to hand


def test_a_report_too_large_is_not_handed_over():
    slot = Handover()
    slot.open()
    try:
        assert not slot.put(b"x" * SIZE)  # the horse then sends it itself
        assert slot.take() is None
    finally:
        slot.close()


def test_each_task_gets_a_fresh_mapping_a_leftover_process_cannot_write_into():
    """A process left behind by one task keeps that task's mapping only: what it writes
    later never shows up as the next task's report."""
    slot = Handover()
    slot.open()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the leftover: waits for the next task, then writes into its old mapping
        os.close(writer)
        os.read(reader, 1)
        slot.put(b'{"forged": true}')
        os._exit(0)
    os.close(reader)
    try:
        slot.close()
        slot.open()  # the next task's mapping
        os.write(writer, b"go")
        os.waitpid(pid, 0)
        assert slot.take() is None
    finally:
        os.close(writer)
        slot.close()


def test_the_worker_parent_imports_no_database_or_git_library():
    """Every module the worker parent holds is copied into each forked horse's page tables;
    a worker never opens a database or a git repository, so neither library belongs there."""
    code = (
        "import os, sys; os.environ['PINFLOW_WARM_DAGS'] = '0'\n"
        "import runner.worker; runner.worker.warm_up()\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "rq" in loaded and "httpx" in loaded  # what it does need
    assert not {"sqlalchemy", "dulwich", "fastapi", "uvicorn"} & set(loaded)


def test_the_worker_sends_only_a_report_for_the_try_it_claimed(monkeypatch):
    """The report's body is the horse's; which try it finishes is the claim's. A report naming
    another try, or one that is not a report, is never sent."""
    from dagstore.core.protocol import JobPayload, TaskSpec
    from runner import job as job_module
    from runner.claim import CLAIMS, Claimed

    payload = JobPayload(ti_id=7, try_number=2, run_id="r", repo="repo", sha="a" * 40,
                         fileloc="dags/d.py", dag_id="d", task_id="t", queue="default")  # fmt: skip
    spec = TaskSpec(
        ti_id=7, try_number=2, run_id="r", dag_id="d", task_id="t", repo="repo", sha="a" * 40,
        fileloc="dags/d.py", logical_date="", conf={}, timeout=None, upstream_results={},
        heartbeat_interval=1.0, credential="pftry_7_2_x",
    )  # fmt: skip
    sent = []
    monkeypatch.setattr(job_module, "send_report", lambda *args: sent.append(args) or "success")
    monkeypatch.setitem(CLAIMS._pending, (7, 2), Claimed(spec, 0.0))  # noqa: SLF001
    other_try = b'{"try_number": 1, "state": "success"}'
    assert job_module.send_handed_over(payload.model_dump(), other_try) == "unreadable"
    assert job_module.send_handed_over(payload.model_dump(), b"not json") == "unreadable"
    assert not sent
    ours = b'{"try_number": 2, "state": "failed", "error": "boom"}'
    assert job_module.send_handed_over(payload.model_dump(), ours) == "success"
    (_, to_spec, report, credential), = sent
    assert (to_spec.ti_id, report.state, report.error, credential) == (7, "failed", "boom",
                                                                       "pftry_7_2_x")  # fmt: skip
