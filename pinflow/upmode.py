"""What `pinflow up` checks before it starts anything: that its port is free, and how pushed
code will be parsed on this machine.

The README promises that python3, git and make are enough for `make up`. The parse sandbox
needs bubblewrap, which a fresh machine may not have; the API server then refuses to parse
(`dagstore.parsing.sandbox`: never a silent fallback). `pinflow up` on loopback is one user
pushing their own code to themselves, so there it starts in an announced *single-user mode*
instead: its own server parses without the box (PINFLOW_PARSE_SANDBOX=off, given to that
child alone) and the banner says so and what to install. `pinflow server` is never changed:
it still refuses. Listening beyond loopback without a box is refused, since then others could
push code that runs with this user's privileges; an explicit PINFLOW_PARSE_SANDBOX is obeyed.

A busy port is said before anything starts: otherwise `up` would wait for *a* server to
answer on it, find someone else's, and drive that one.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket
from dataclasses import dataclass

from dagstore.core.errors import BadRequest, Conflict
from dagstore.parsing.sandbox import OFF, box_problem

INSTALL = "install bubblewrap (`apt-get install bubblewrap`, `dnf install bubblewrap`) and restart"


@dataclass(frozen=True)
class ParseMode:
    """How `up`'s server parses pushed code: `setting` is its PINFLOW_PARSE_SANDBOX."""

    setting: str  # "on" or "off"
    problem: str | None = None  # why there is no box (None: boxed, or off by choice)
    chosen: bool = False  # the user set PINFLOW_PARSE_SANDBOX themselves

    @property
    def sandboxed(self) -> bool:
        return self.setting != OFF

    @property
    def single_user(self) -> bool:
        return not self.sandboxed and not self.chosen

    def describe(self) -> str:
        """The banner's line about parsing."""
        if self.sandboxed:
            return "sandboxed (bubblewrap): pushed code sees only its own files, no network"
        if self.chosen:
            return "NOT SANDBOXED (PINFLOW_PARSE_SANDBOX=off): pushed code has your privileges"
        return (
            f"NOT SANDBOXED, single-user mode (loopback only): {self.problem}, so pushed code "
            f"is parsed with your privileges. To sandbox it, {INSTALL}"
        )


def parse_mode(host: str) -> ParseMode:
    """Decide once, before the server starts; refuses (BadRequest) an unboxed server that
    others could reach, or a box asked for that cannot be built."""
    asked = (os.environ.get("PINFLOW_PARSE_SANDBOX") or "").strip().lower()
    if asked == OFF:
        return ParseMode(OFF, chosen=True)
    problem = box_problem()
    if problem is None:
        return ParseMode("on", chosen=bool(asked))
    if asked:
        raise BadRequest(f"PINFLOW_PARSE_SANDBOX={asked} but {problem}")
    if shutil.which("bwrap") is None:
        problem = "bubblewrap is not installed"  # the rest of the server's message is for servers
    if not is_loopback(host):
        raise BadRequest(
            f"pushed code cannot be sandboxed here ({problem}), and --host {host} would let "
            f"others push code that runs with your privileges. {INSTALL}, listen on "
            "127.0.0.1 (single-user mode), or set PINFLOW_PARSE_SANDBOX=off to accept it"
        )
    return ParseMode(OFF, problem=problem)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """Conflict when another program listens on `host:port`; BadRequest when it cannot be
    listened on at all. Bound as uvicorn binds (SO_REUSEADDR), so a socket in TIME_WAIT
    left by a previous `up` is no reason to refuse."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise BadRequest(f"cannot listen on {host}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                other = port + 1 if port < 65535 else 8741
                raise Conflict(
                    f"port {port} on {host} is busy: another program listens there (a "
                    f"`pinflow up` already running?). Choose another port: `make up "
                    f"PORT={other}`, `pinflow up --port {other}` or PINFLOW_UP_PORT={other}"
                ) from None
            raise BadRequest(f"cannot listen on {host}:{port}: {exc.strerror}") from None
