"""Helpers of the example DAGs: a sibling module, imported by name from the DAG file."""

from __future__ import annotations

REGIONS = ["eu", "us", "apac"]

_ORDERS = {
    "eu": [("anna", 120.0), ("bert", 35.5), ("chloe", 80.0)],
    "us": [("dave", 250.0), ("erin", 12.0)],
    "apac": [("fumi", 99.9), ("gita", 45.0), ("hiro", 15.0), ("ines", 60.0)],
}


def fetch_orders(region: str) -> list[dict]:
    """Stands in for an API call or a database query."""
    return [{"customer": c, "amount": a, "region": region} for c, a in _ORDERS[region]]


def summarize(orders: list[dict]) -> dict:
    total = round(sum(o["amount"] for o in orders), 2)
    return {"orders": len(orders), "revenue": total}
