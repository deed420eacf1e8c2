"""An ETL pipeline: fan out over regions, fan in to one report.

- TaskFlow style: passing a task's result to another wires the dependency and the value.
- One extract per region runs in parallel (fan-out); `load` waits for all of them (fan-in).
- The "eu" source fails on its first try (a simulated timeout): the retry succeeds.
- Scheduled every 10 minutes; `pinflow trigger etl` runs it now.
"""

from helpers import REGIONS, fetch_orders, summarize

from pinflow import DAG, task

with DAG(
    "etl",
    schedule="*/10 * * * *",
    start_date="2026-01-01",
    catchup=False,
    tags=["example"],
    description="Orders per region, cleaned and summed into one report",
):

    @task(retries=2, retry_delay=1, timeout=60)
    def extract(region, context):
        if region == "eu" and context["try_number"] == 1:
            raise ConnectionError("orders API timed out (simulated): pinflow retries this task")
        orders = fetch_orders(region)
        print(f"extracted {len(orders)} orders from {region} at commit {context['sha'][:7]}")
        return orders

    @task
    def clean(orders):
        return [o for o in orders if o["amount"] >= 20]

    @task
    def load(parts, context):
        orders = [o for part in parts for o in part]
        report = summarize(orders)
        report["sha"] = context["sha"]
        print("report:", report)
        return report

    load(
        [
            clean.override(task_id=f"clean_{r}")(extract.override(task_id=f"extract_{r}")(r))
            for r in REGIONS
        ]
    )
