"""The PostgreSQL sink: binary COPY into prices_raw with rejects and offsets in one transaction
(sink.py), its encoder (pgcopy.py), its tables and error table (setup.py) and its table's own rules
as admission rules (rules.py). Nothing outside finpulse.sinks imports psycopg (configuration uses
psycopg.conninfo to build a connection string)."""

from __future__ import annotations

from finpulse.sinks.postgres.sink import PostgresSink

__all__ = ["PostgresSink"]
