"""The real `git` client, isolated from the machine's own configuration."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def git_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME="Ada Author",
        GIT_AUTHOR_EMAIL="ada@example.com",
        GIT_COMMITTER_NAME="Ada Author",
        GIT_COMMITTER_EMAIL="ada@example.com",
    )
    return env


class Git:
    """A work tree driven with the git binary."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = git_env(path.parent)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["git", *args],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def init(self, branch: str = "main") -> Git:
        self.run("init", "-q", "-b", branch)
        return self

    def write(self, rel: str, content: str | bytes, executable: bool = False) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        if executable:
            target.chmod(0o755)

    def commit(self, message: str, **files: str) -> str:
        for rel, content in files.items():
            self.write(rel.replace("__", "/"), content)
        self.run("add", "-A")
        self.run("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self, ref: str = "HEAD") -> str:
        return self.run("rev-parse", ref).stdout.strip()


def pack_objects(work: Git, objects: str, *args: str) -> bytes:
    """`git pack-objects --stdout` of `objects` (one per line) in `work`: a pack's bytes."""
    return subprocess.run(
        ["git", "pack-objects", "--stdout", "-q", *args],
        cwd=work.path,
        env=work.env,
        input=objects.encode(),
        capture_output=True,
        check=True,
    ).stdout


def clone(url: str, dest: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "clone", "-q", *args, url, str(dest)],
        env=git_env(dest.parent),
        capture_output=True,
        text=True,
        timeout=120,
    )


def work_on_tip(path: Path, url: str, branch: str = "main") -> Git:
    """A fresh work tree at the remote branch's tip, ready to commit on top of it."""
    work = Git(path)
    work.run("init", "-q", "-b", branch)
    work.run("fetch", "-q", url, branch)
    work.run("reset", "-q", "--hard", "FETCH_HEAD")
    return work


def at_once(calls: list[Callable[[], T]]) -> list[T]:
    """Run every call in a thread of its own, all released at the same moment; their
    results, in order."""
    results: list = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def race_pushes(
    works: list[Git], urls: str | list[str], branch: str = "main"
) -> list[tuple[str, subprocess.CompletedProcess[str]]]:
    """Start every push at the same moment (client i to `urls[i]`, or all to one URL);
    returns (pushed sha, result) per client."""
    targets = [urls] * len(works) if isinstance(urls, str) else urls
    return at_once(
        [
            lambda w=work, u=url: (w.head(), w.run("push", u, branch, check=False))
            for work, url in zip(works, targets, strict=True)
        ]
    )


def receive_pack(
    url: str, token: str, updates: list[tuple[str, str, str]], pack: bytes
) -> list[str]:
    """One receive-pack request as a git client sends it (ref updates `(old, new, ref)`, then the
    pack), sent as is: a second client replaying the same bytes races nothing by timing.
    Returns the report's lines (`unpack ok`, then `ok REF` or `ng REF why` per ref)."""
    import httpx
    from dulwich.protocol import pkt_line

    lines = [f"{old} {new} {ref}".encode() for old, new, ref in updates]
    lines[0] += b"\0report-status"
    body = b"".join(pkt_line(line + b"\n") for line in lines) + pkt_line(None) + pack
    response = httpx.post(
        f"{url}/git-receive-pack",
        content=body,
        auth=("x", token),
        headers={"Content-Type": "application/x-git-receive-pack-request"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    report = []
    for raw in response.content.split(b"\n"):
        text = raw[4:].decode(errors="replace")
        if text.startswith(("unpack ", "ok ", "ng ")):
            report.append(text)
    return report
