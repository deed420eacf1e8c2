"""The web UI, served by `pinflow server` itself at `/` (no separate process, no build step).

Server-rendered Jinja2 pages with htmx (vendored in `static/`, no CDN) polling the fragments
that change (a run's tasks, a running task's log). Every page calls the same functions the
HTTP API's routes are made of, with the same scope checks, and never runs SQL of its own.
"""
