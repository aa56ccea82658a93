"""`ingest`, `replay`, `verify`, `status` and `show` as a role that may only read and write
FinPulse's tables (the GRANTs of docs/security.md): DDL belongs to `init`, run by the owner."""

from __future__ import annotations

import psycopg
import pytest
from pydantic import SecretStr
from support.cli import env_for, finpulse
from support.sinks import assert_exactly_once, delta_rows, pg_rows, produced

# scripts/services up creates this login role with no rights; each test grants it what docs/security.md says.
ROLE, PASSWORD = "finpulse_ingest", "finpulse_ingest"

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def test_the_daily_commands_need_no_ddl_rights(isolated):
    schema = isolated.postgres_schema  # `isolated` made the tables as the owner, as `init` does
    with psycopg.connect(isolated.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {ROLE}")
        conn.execute(
            "GRANT SELECT, INSERT, UPDATE ON prices_raw, prices_rejected, finpulse_offsets, finpulse_gaps, "
            f"finpulse_duplicates, prices_duplicates, finpulse_sequence_gaps, prices_1m, finpulse_retention TO {ROLE}"
        )
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON finpulse_trade_windows TO {ROLE}")
    limited = isolated.model_copy(update={"postgres_user": ROLE, "postgres_password": SecretStr(PASSWORD)})
    with (
        psycopg.connect(limited.postgres_conninfo(), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("CREATE TABLE IF NOT EXISTS prices_raw (x int)")  # the role really cannot run DDL

    env = env_for(limited)
    total = 4_000
    finpulse("produce", "--count", str(total), env=env)
    finpulse("ingest", "--drain", env=env)
    expected = produced(total)
    assert_exactly_once(pg_rows(isolated), expected, "postgres")
    assert_exactly_once(delta_rows(isolated), expected, "delta")
    assert '"postgres"' in finpulse("status", "--json", env=env).stdout
    assert finpulse("verify", env=env).returncode == 0
    finpulse("show", env=env)

    with psycopg.connect(isolated.postgres_conninfo(), autocommit=True) as conn:
        conn.execute("DELETE FROM prices_raw WHERE kafka_partition = 1 AND kafka_offset < 40")
    finpulse("replay", "--partition", "1", "--from-offset", "0", "--sink", "postgres", env=env)
    assert finpulse("verify", env=env).returncode == 0
    assert_exactly_once(pg_rows(isolated), expected, "postgres after replay")
