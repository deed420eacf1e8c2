"""The baseline for bench/store.py: a plain on-disk bare repository served over smart HTTP by
the same dulwich code and web stack pinflow uses (a2wsgi under uvicorn), without pinflow.

Run: `python -m bench._diskrepo PATH PORT`.
"""

from __future__ import annotations

import sys

import uvicorn
from a2wsgi import WSGIMiddleware
from dulwich.repo import Repo
from dulwich.server import DictBackend
from dulwich.web import make_wsgi_chain


def app(path: str):
    backend = DictBackend({"/repo.git": Repo(path), "/repo": Repo(path)})
    chain = make_wsgi_chain(backend)

    def wsgi(environ, start_response):
        environ.pop("HTTP_TRANSFER_ENCODING", None)  # uvicorn de-chunked it (PITFALLS.md)
        return chain(environ, start_response)

    return WSGIMiddleware(wsgi, workers=8)


if __name__ == "__main__":
    uvicorn.run(app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
