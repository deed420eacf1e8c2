"""The ground every wing of the store stands on: the database and its clock, settings, the
store's tables, the one exception tree, names and shas, the job protocol the scheduler and
the runner share, Redis URLs, and small process helpers.

May import nothing of pinflow's own outside `dagstore.core`: everything else imports it.
"""
