"""Git objects and refs kept in the database, read through a bounded disk cache: packs in,
packs out, consolidation, the versions (commits) each repo received, archives of one commit,
and unpacking them safely.

May import `dagstore.core` only. The git remote's HTTP face is `dagstore.api.git_http`; what a
push means to the store (parse, make current) is `dagstore.receive`.
"""
