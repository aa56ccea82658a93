"""Private instances of the local stack's services, for tests that stop and start them.

The shared services (Kafka :29092, PostgreSQL :5433, Azurite :10000) are used by other tests and
by people at the same time, so a fault test must never stop them. This package starts its own
PostgreSQL, Kafka and Azurite on free ports, with their state in a temporary directory, from the
binaries that `scripts/services up` installs:

  PostgreSQL  Debian's initdb/pg_ctl/postgres under /usr/lib/postgresql/<major>/bin
  Kafka       the jars Maven resolved into .stack/kafka/libs (Kafka 4.x, KRaft), run with `java`
  Azurite     the npm install in .stack/azurite/node_modules/.bin/azurite-blob, run with `node`

A missing binary fails the test (never skips) with what to run. Each service can be stopped and
started again on the same data, and `close()` stops everything this package started: the
fixtures call it in their teardown, and an atexit hook calls it again as a last resort.

Modules: `base` (shared helpers, the `Service` base class, `running`, `close_all`), `postgres`,
`kafka` and `azurite` (one per service).
"""

from __future__ import annotations

from support.private.azurite import PrivateAzurite
from support.private.base import close_all, new_base, running
from support.private.kafka import PrivateKafka
from support.private.postgres import PrivatePostgres

__all__ = ["PrivateAzurite", "PrivateKafka", "PrivatePostgres", "close_all", "new_base", "running"]
