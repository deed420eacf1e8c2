"""Who may do what: API tokens and their scopes, the per-server cache of verified tokens, and
try credentials (what a task's process holds instead of its worker's token).

May import `dagstore.core` only.
"""
