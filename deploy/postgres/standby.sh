#!/bin/bash
# postgres-b (compose.yaml): on first start, clone postgres-a with `pg_basebackup -R` (which
# writes the settings to stream from it), then run as its hot standby. After a failover
# (`pg_ctl promote` here, or Patroni), delete the old primary's volume before starting it
# again: it must come back as a fresh standby of the new primary, never as a second primary.
set -euo pipefail
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_basebackup -h postgres-a -U replicator -D "$PGDATA" -R -X stream -c fast \
      -d "application_name=postgres-b"; do
    echo "waiting for postgres-a to clone it"; rm -rf "${PGDATA:?}"/*; sleep 2
  done
  chmod 0700 "$PGDATA"
fi
exec postgres -c hot_standby=on
