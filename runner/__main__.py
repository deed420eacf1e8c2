"""`python -m runner agent|worker OPTIONS`: the two processes `pinflow worker` becomes
(`runner.agent`). Not a user command: `pinflow worker` starts them."""

from __future__ import annotations

import sys

from runner.agent import WorkerOptions, agent_main


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("agent", "worker"):
        print("usage: pinflow worker (python -m runner is started by it)", file=sys.stderr)
        return 2
    options = WorkerOptions.loads(argv[1])
    if argv[0] == "agent":
        return agent_main(options)
    from runner.worker import worker_main

    return worker_main(options)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
