"""From a commit to the DAGs it defines: the sandbox pushed code is imported in, the child
process that imports DAG files, the server's second look at what it hands back, the rules
that make a version current, and reading DAGs back.

May import `dagstore.git`, `dagstore.authoring` and `dagstore.core`; nothing above.
"""
