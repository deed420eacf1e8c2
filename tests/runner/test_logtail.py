"""A try's log keeps its head and its tail (`dagstore.core.logtail`): the traceback at the end
of a long log survives, the log says what was cut, and the worker's copy and the server's
(built from heartbeat pieces) agree."""

from __future__ import annotations

import random

import pytest

from dagstore.core.logtail import DEFAULT_CAP, MIN_CAP, HeadTail, check_cap
from runner.capture import CappedLog
from scheduler.tries import TryLog

CAP = 16 * 1024
TRACEBACK = "Traceback (most recent call last):\n  File 'dags/etl.py'\nValueError: row 77 is bad\n"


def _noisy(lines: int) -> list[str]:
    return [f"line {n}: processed a batch of rows ünïcödé\n" for n in range(lines)]


def test_a_short_log_is_kept_whole() -> None:
    log = CappedLog(CAP)
    for line in _noisy(10):
        log.write(line)
    assert log.getvalue() == "".join(_noisy(10)) and not log.truncated
    head, tail, total = log.parts()
    assert head + tail == log.getvalue() and total == len(log.getvalue().encode())


def test_a_long_log_keeps_head_and_tail_and_says_what_was_cut() -> None:
    """The bug this replaces: a log capped at its first bytes lost the traceback at its end."""
    log = CappedLog(CAP)
    lines = _noisy(5000)
    for line in lines:
        log.write(line)
    log.write(TRACEBACK)
    text = log.getvalue()
    written = len(("".join(lines) + TRACEBACK).encode())
    assert text.startswith(lines[0]) and text.endswith(TRACEBACK)
    assert log.truncated
    assert len(text.encode()) <= CAP + 200
    head, tail = bytes(log.stream.head), log.stream.tail
    cut = written - len(head) - len(tail)
    assert text.encode().startswith(head) and text.encode().endswith(tail)
    assert len(text.encode()) - len(head) - len(tail) < 200  # the marker only
    assert f"[pinflow: {cut:,} bytes cut here" in text
    assert "PINFLOW_TASK_LOG_MAX_BYTES" in text
    # The tail starts at a line, and nothing is split mid-character.
    after = text.split("PINFLOW_TASK_LOG_MAX_BYTES)]\n", 1)[1]
    assert after.startswith("line ") and "\ufffd" not in text


@pytest.mark.parametrize("seed", range(8))
def test_server_copy_built_from_pieces_matches_the_workers(seed: int) -> None:
    """Heartbeats ship pieces at random moments, some lost; the server's log (a HeadTail
    restored from its row at every piece, as `scheduler.tries.append_log` does) ends equal to
    the worker's, and a follower reading from any offset gets what came after it."""
    rng = random.Random(seed)
    worker = CappedLog(CAP)
    row = ("", "", 0)
    shipped = 0
    for line in _noisy(rng.randrange(50, 3000)) + [TRACEBACK]:
        worker.write(line)
        if rng.random() < 0.05:
            offset, piece = worker.piece(shipped)
            if rng.random() < 0.2:
                continue  # this heartbeat was lost: the next one ships from `shipped` again
            server = HeadTail.restore(CAP, *row)
            server.write_at(offset, piece.encode())
            row = (*server.text(), server.total)
            shipped = server.total
    offset, piece = worker.piece(shipped)  # the last heartbeat ships the rest
    server = HeadTail.restore(CAP, *row)
    server.write_at(offset, piece.encode())
    assert server.render().decode() == worker.getvalue()
    head, tail, total = worker.parts()
    final = HeadTail.restore(CAP, *TryLog(head, tail, total).values(CAP).values())
    assert final.render().decode() == worker.getvalue()
    if row[2]:
        live = HeadTail.restore(CAP, *row)
        assert worker.getvalue().encode().startswith(bytes(live.head))
    follower = rng.randrange(0, total + 1)
    rest = final.since(follower).decode("utf-8", "replace")
    assert rest.endswith(TRACEBACK) or follower == total


def test_an_older_workers_whole_log_is_capped_by_the_server() -> None:
    whole = "".join(_noisy(3000)) + TRACEBACK
    values = TryLog(whole).values(CAP)
    kept = HeadTail.restore(CAP, values["log"], values["log_tail"], values["log_bytes"])
    assert kept.render().decode().endswith(TRACEBACK)
    assert values["log_bytes"] == len(whole.encode())


def test_the_cap_is_a_setting_within_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagstore.core.settings import Settings

    assert Settings.load().task_log_max_bytes == DEFAULT_CAP
    monkeypatch.setenv("PINFLOW_TASK_LOG_MAX_BYTES", "65536")
    assert Settings.load().task_log_max_bytes == 65536
    for bad in ("12k", "-1", str(MIN_CAP - 1), str(2**40)):
        monkeypatch.setenv("PINFLOW_TASK_LOG_MAX_BYTES", bad)
        with pytest.raises(SystemExit, match="PINFLOW_TASK_LOG_MAX_BYTES"):
            Settings.load()
    with pytest.raises(ValueError, match="between"):
        check_cap(100)
