"""A generated DAG repository for the benchmarks: realistic files, the same for the same seed."""

from __future__ import annotations

import json
import random

SEED = 20260101
FILE_COUNT = 500
PYTHON_BYTES = 1_400_000  # python sources; with the data files below: about 2 MB in all
DATA_FILES = {  # a few larger data files, as DAG repos carry (seeds, lookups, a model)
    "data/raw/events_2025.csv": 160_000,
    "data/raw/customers.csv": 120_000,
    "data/lookup/regions.csv": 90_000,
    "data/lookup/products.json": 80_000,
    "data/config/feature_flags.json": 50_000,
    "data/models/scoring.bin": 100_000,
}
DAG_FILES = 4
COMMIT_DATE = "2026-01-01T00:00:00+00:00"  # fixed, so the commit sha is the same every run

# fmt: off
WORDS = [  # names in generated code and data
    "account", "amount", "batch", "bucket", "cache", "client", "config", "count", "customer",
    "daily", "data", "delta", "event", "export", "extract", "feature", "file", "filter", "flag",
    "frame", "group", "hourly", "index", "input", "item", "job", "key", "label", "ledger",
    "limit", "load", "merge", "metric", "model", "offset", "order", "output", "page", "partition",
    "path", "payload", "price", "product", "query", "queue", "raw", "record", "region", "report",
    "request", "result", "row", "schema", "score", "segment", "session", "source", "stage",
    "status", "store", "summary", "table", "target", "task", "total", "transform", "user",
    "value", "window",
]
# fmt: on


def ident(rng: random.Random, parts: int = 2) -> str:
    """A snake_case name from the word list, like real code's names."""
    return "_".join(rng.choice(WORDS) for _ in range(parts))


def sentence(rng: random.Random, words: int = 8) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:]


def python_function(rng: random.Random) -> list[str]:
    """One small, valid function: docstring, a few assignments that use earlier names."""
    args = sorted({ident(rng, 1) for _ in range(rng.randint(1, 3))})
    names = list(args)
    lines = [f"def {ident(rng)}({', '.join(args)}):", f'    """{sentence(rng)}."""']
    for _ in range(rng.randint(2, 8)):
        target = ident(rng)
        op = rng.choice(["+", "-", "*", "//", "%"])
        value = rng.randint(1, 999)
        lines.append(f"    {target} = {rng.choice(names)} {op} {value}")
        names.append(target)
    lines += [f"    return {names[-1]}", "", ""]
    return lines


def python_source(rng: random.Random, size: int) -> str:
    """A module of roughly `size` bytes: docstring, imports, then functions."""
    lines = [f'"""{sentence(rng, 10)}."""', "", "from __future__ import annotations", "", ""]
    length = sum(len(line) + 1 for line in lines)
    while length < size:
        block = python_function(rng)
        lines += block
        length += sum(len(line) + 1 for line in block)
    return "\n".join(lines).rstrip() + "\n"


def csv_data(rng: random.Random, size: int) -> str:
    rows = ["id,ts,region,amount,score,label"]
    length = len(rows[0]) + 1
    while length < size:
        row = (
            f"{len(rows)},2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z,{rng.choice(WORDS)},"
            f"{rng.uniform(0, 10_000):.2f},{rng.random():.6f},{ident(rng)}"
        )
        rows.append(row)
        length += len(row) + 1
    return "\n".join(rows) + "\n"


def json_data(rng: random.Random, size: int) -> str:
    items: list[dict[str, object]] = []
    length = 0
    while length < size:
        item = {"key": ident(rng, 3), "enabled": rng.random() < 0.5, "weight": rng.random()}
        items.append(item)
        length += len(json.dumps(item, indent=1)) + 4
    return json.dumps(items, indent=1) + "\n"


def dag_source(index: int) -> str:
    """A real DAG file, so the push exercises the server's parse as it would in production."""
    return (
        f'"""Benchmark DAG {index}: extract, transform, load."""\n\n'
        "from pinflow import DAG, task\n\n"
        "from common.helpers import double\n\n"
        f'with DAG("bench_etl_{index}", schedule=None, start_date="2026-01-01", catchup=False):\n\n'
        "    @task\n"
        "    def extract():\n"
        f"        return {{'rows': {index + 1}}}\n\n"
        "    @task\n"
        "    def load(data):\n"
        "        return double(data['rows'])\n\n"
        "    load(extract())\n"
    )


def folders(rng: random.Random, count: int = 40) -> list[str]:
    """Nested package folders, 1 to 4 levels deep, under the usual top-level names."""
    found: set[str] = set()
    while len(found) < count:
        top = rng.choice(["dags/common", "dags/pipelines", "src/etl", "src/lib", "tests"])
        depth = rng.randint(0, 3)
        found.add("/".join([top, *(ident(rng, 1) for _ in range(depth))]))
    return sorted(found)


def python_sizes(rng: random.Random, count: int, total: int) -> list[int]:
    """Lognormal sizes (many small modules, a few big ones), scaled to sum to `total`."""
    raw = [min(max(rng.lognormvariate(7.6, 0.9), 150), 40_000) for _ in range(count)]
    scale = total / sum(raw)
    return [max(int(size * scale), 100) for size in raw]


def repo_files(seed: int = SEED) -> dict[str, str | bytes]:
    """The benchmark repo's files, path -> content; the same for the same seed."""
    rng = random.Random(seed)
    files: dict[str, str | bytes] = {
        "README.md": "# bench repo\n\nGenerated by bench/fetch.py.\n",
        "dags/common/__init__.py": "",
        "dags/common/helpers.py": "def double(x):\n    return 2 * x\n",
    }
    files |= {f"dags/bench_etl_{i}.py": dag_source(i) for i in range(DAG_FILES)}
    for path, size in DATA_FILES.items():
        if path.endswith(".csv"):
            files[path] = csv_data(rng, size)
        elif path.endswith(".json"):
            files[path] = json_data(rng, size)
        else:
            files[path] = rng.randbytes(size)
    dirs = folders(rng)
    remaining = FILE_COUNT - len(files)
    for size in python_sizes(rng, remaining, PYTHON_BYTES):
        path = f"{rng.choice(dirs)}/{ident(rng)}.py"
        while path in files:
            path = f"{path.removesuffix('.py')}_{rng.randint(2, 99)}.py"
        files[path] = python_source(rng, size)
    return files
