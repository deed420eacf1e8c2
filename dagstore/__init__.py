"""The DAG store: what DAGs are and which versions of them exist.

A push arrives at `api/git_http.py` (git smart HTTP) and goes to `receive.py`, which stores its
objects (`git/`), records the new commits as versions, parses them in the sandbox (`parsing/`)
and makes each DAG's newest clean version current. `from pinflow import DAG, task` loads
`authoring/` alone.

Wings, each importing only those below it (checked by `lint-imports`, pyproject.toml):

    api/                       HTTP: REST routes, token checks, the git remote, archives
    receive  catchup  diff  store   what a push does; catching up after a crash; diffs of two
                               commits; what a server process holds for its whole life
    parsing/                   the sandbox, the child that imports DAG files, checks of its
                               results, what becomes current, reading DAGs back
    git/  authoring/  access/  objects, refs and packs in the database, archives, the disk
                               cache | the DAG model DAG files import | tokens, scopes, try
                               credentials
    core/                      the ground: database, settings, tables, errors, names, the
                               worker protocol, Redis URLs
"""
