"""What pushed code can write at parse time (issue 25, findings 1 and 2 of security review 2).

The box used to have a server folder bound read-write (its results and its output), and the
server opened `parse.log` there again by name for each new parse process: a DAG file that put
a symlink there made the server append the next file's output wherever the link pointed, as
the server's user. And the folder had no quota: one parse filled the server's disk. Now the
only place the box can write is its own size-capped tmpfs `/tmp`, and results come back
through a pipe. Tested as a root server (the child is `nobody`) and as an unprivileged one
(the child owns the box's tmpfs mounts in its user namespace).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dagstore.parsing.sandbox import TMP_BYTES
from tests.support.git import Git
from tests.support.server import start_server

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
FILL_MIB = 160

# Replaces every log or results file it can reach with a symlink to `target`, then dies, so
# that the server starts a new parse process for the next file (which prints a "key").
LINKER = """# a pinflow DAG file
import os, signal, sys
skip = {{"/proc", "/sys", "/usr", sys.prefix, sys.base_prefix}}  # big, and read only
for folder, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(folder, d) not in skip]
    for name in {{*(f for f in files if f.endswith((".log", ".jsonl"))), "parse.log"}}:
        path = os.path.join(folder, name)
        try:
            if os.path.lexists(path):
                os.unlink(path)
            os.symlink({target!r}, path)
        except OSError:
            pass
os.kill(os.getpid(), signal.SIGKILL)
"""
KEY = """# a pinflow DAG file
print("ssh-ed25519 AAAA-key-from-the-parse-box", flush=True)
"""

# Finds every folder it can create a file in, writes as much as it can into each (files of
# 8 MiB: the box caps each file at 16), holds it a moment, and reports where the bytes went.
FILLER = """# a pinflow DAG file
import json, os, time

def writable():
    for folder, dirs, _ in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) not in ("/proc", "/sys")]
        try:
            os.close(os.open(os.path.join(folder, ".probe"), os.O_CREAT | os.O_WRONLY, 0o600))
            os.unlink(os.path.join(folder, ".probe"))
            yield folder
        except OSError:
            pass

chunk, wrote = b"x" * (1 << 20), {{}}
for folder in list(writable()):
    wrote[folder] = 0
    try:
        for i in range({mib} // 8):
            with open(os.path.join(folder, "fill%d" % i), "wb") as f:
                for _ in range(8):
                    f.write(chunk)
                    wrote[folder] += len(chunk)
    except OSError:
        pass
tmpfs = os.stat("/tmp").st_dev
elsewhere = [folder for folder in wrote if os.stat(folder).st_dev != tmpfs]
time.sleep({hold})
raise RuntimeError("WROTE " + json.dumps(wrote) + " OFF-TMP " + json.dumps(elsewhere))
"""


def assert_only_the_boxes_tmp(error: str) -> None:
    """What FILLER reported: it wrote only on the box's /tmp tmpfs (folders bwrap made there
    for its binds are on it too), and no more than its size."""
    found = re.search(r"WROTE (\{.*?\}) OFF-TMP (\[.*?\])", error)
    assert found, error
    wrote, elsewhere = json.loads(found.group(1)), json.loads(found.group(2))
    assert elsewhere == [], f"the box could write in {elsewhere} (besides its /tmp): {wrote}"
    assert 0 < sum(wrote.values()) <= TMP_BYTES, wrote


def disk_use(folder: Path) -> int:
    total = 0
    for path, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                total += os.lstat(os.path.join(path, name)).st_blocks * 512
    return total


def test_a_dag_file_cannot_make_the_server_write_outside_the_box(repo_name, tmp_path):
    """Finding 1 (critical): nothing outside the box is created or written, whatever the
    DAG files leave where they can write."""
    target = tmp_path / "outside-the-box" / "authorized_keys"
    target.parent.mkdir()
    server = start_server(tmp_path / "home")
    try:
        server.create_repo(repo_name)
        work = Git(tmp_path / "w").init()
        work.commit("links", **{"dags__a.py": LINKER.format(target=str(target)), "dags__b.py": KEY})
        push = work.run("push", server.git_url(repo_name, server.tokens["push"]), "main")
        assert not target.exists(), f"written outside the box: {target.read_text()!r}"
        assert list(target.parent.iterdir()) == []
        assert "dags/a.py: the parse process was killed by SIGKILL" in push.stderr, push.stderr
    finally:
        server.stop()


def test_a_parse_writes_only_its_capped_tmp_never_the_servers_disk(repo_name, tmp_path):
    """Finding 2: a DAG file writing all it can lands at most TMP_BYTES, all in the box's own
    tmpfs; the server's temp folder (where versions are unpacked) does not grow meanwhile."""
    server_tmp = tmp_path / "server-tmp"
    server_tmp.mkdir()
    # A parse timeout far above the file's 3 s hold: this test is about disk, and filling the
    # tmpfs on a loaded machine took longer than the default 30 s.
    server = start_server(tmp_path / "home", TMPDIR=str(server_tmp), PINFLOW_PARSE_TIMEOUT="120")
    try:
        server.create_repo(repo_name)
        work = Git(tmp_path / "w").init()
        work.commit("fill", **{"dags__fill.py": FILLER.format(mib=FILL_MIB, hold=3)})
        pushed: list[subprocess.CompletedProcess[str]] = []
        pusher = threading.Thread(
            target=lambda: pushed.append(
                work.run("push", server.git_url(repo_name, server.tokens["push"]), "main")
            )
        )
        before, peak = disk_use(server_tmp), 0
        pusher.start()
        while pusher.is_alive():  # the file holds its bytes for 3 s: the peak is seen
            peak = max(peak, disk_use(server_tmp))
            time.sleep(0.05)
        pusher.join()
        (push,) = pushed
        assert_only_the_boxes_tmp(push.stderr)
        grew = (peak - before) >> 20
        assert grew < 8, f"the server's temp folder grew by {grew} MiB during the parse"
    finally:
        server.stop()


BOXED_AS_NOBODY = """
import json, os, subprocess, sys, tempfile
from pathlib import Path
from dagstore.parsing.sandbox import Sandbox
root = Path(tempfile.mkdtemp()) / "version"
root.mkdir()
args, env = Sandbox("bwrap").wrap([sys.executable, "-c", sys.argv[1]], root)
done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
print(json.dumps([done.returncode, done.stdout, done.stderr]))
"""


def test_an_unprivileged_servers_box_writes_only_its_capped_tmp(tmp_path):
    """Under a non-root server the child owns the box's root and /dev (tmpfs without a size,
    in its user namespace): they must be read only, or they are a second, uncapped /tmp."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None or not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip("needs root, setpriv and the system's python3 to act as an unprivileged user")
    probe = FILLER.format(mib=FILL_MIB, hold=0)
    done = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        + [SYSTEM_PYTHON, "-c", BOXED_AS_NOBODY, probe],
        cwd="/tmp",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": "/tmp"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    code, _, stderr = json.loads(done.stdout)
    if "WROTE" not in stderr and "namespace" in stderr:
        pytest.skip(f"no unprivileged user namespaces here: {stderr.strip()}")
    assert code != 0
    assert_only_the_boxes_tmp(stderr)
