"""The DAG store's Prometheus series: pushes, parses and archives, counted where they happen.

Each API server process counts its own; Prometheus sums them across servers (`sum by`). The
names are listed with their meaning in README ("Metrics").
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

PUSHES = Counter(
    "pinflow_pushes",
    "Pushes and ref updates, by outcome: landed (a push's refs moved), refused (a ref update "
    "refused: strict repository, bad ref, missing object), unrecorded (landed, but recording "
    "the versions failed; the next push or server start records them)",
    ["outcome"],
)
PARSED_FILES = Counter(
    "pinflow_parsed_files", "DAG files parsed, by outcome: ok or error", ["outcome"]
)
PARSE_SECONDS = Histogram(
    "pinflow_parse_duration_seconds",
    "Wall time to parse one commit's DAG files (archive, unpack, sandboxed import)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
ARCHIVE_REQUESTS = Counter(
    "pinflow_archive_requests",
    "Archive GETs answered, by where the bytes came from: memory (the fast path), cache "
    "(this server's disk or memory cache) or built (from the git store: a cache miss)",
    ["source"],
)
ARCHIVE_BYTES = Counter("pinflow_archive_sent_bytes", "Archive bytes sent to workers and users")
