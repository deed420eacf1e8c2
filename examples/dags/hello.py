"""The smallest DAG: manual runs only (`pinflow trigger hello --wait`)."""

from pinflow import DAG, task

with DAG("hello", schedule=None, tags=["example"]):

    @task
    def greet(context):
        name = context["conf"].get("name", "world")
        print(f"hello, {name}")
        return f"hello, {name}"

    @task
    def shout(greeting):
        return greeting.upper()

    shout(greet())
