"""The design FinPulse replaces, written the way the original consumer was, for comparison only.

kafka-python consumer, one process, every 5 messages: psycopg2 `execute_values` into prices_raw,
commit, then a Delta append of the same 5 rows (delta-rs standing in for the original's Spark
session, which would only be slower), then the Kafka offset commit.
"""

from __future__ import annotations

import time
import warnings

import psycopg2
import psycopg2.extras
import pyarrow as pa
from deltalake import write_deltalake

with warnings.catch_warnings():  # kafka-python loads its schemas with a deprecated importlib call
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer

from finpulse.config import Settings

BATCH = 5  # the original consumer's batch size
INSERT = (
    "INSERT INTO prices_raw (symbol, price, size, timestamp_ms, trade_time, exchange, broker_time, "
    "kafka_partition, kafka_offset, tick_index) VALUES %s"
)
DELTA_SCHEMA = pa.schema(
    [
        ("symbol", pa.string()),
        ("price", pa.float64()),
        ("size", pa.float64()),
        ("timestamp_ms", pa.int64()),
        ("exchange", pa.string()),
    ]
)


def consume(settings: Settings, count: int, delta_path: str) -> float:
    """Ingest `count` messages from the start of the topic; return the seconds it took."""
    import json

    consumer = KafkaConsumer(
        settings.kafka_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.kafka_group_id}-naive",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    conn = psycopg2.connect(
        host=settings.postgres_host,
        port=settings.postgres_port,
        dbname=settings.postgres_db,
        user=settings.postgres_user,
        password=settings.postgres_password.get_secret_value(),
        options=f"-c search_path={settings.postgres_schema}",
    )
    done, buffer = 0, []
    started = time.perf_counter()
    try:
        for msg in consumer:
            t = json.loads(msg.value.decode("utf-8"))
            buffer.append(
                (
                    t["symbol"],
                    float(t["price"]),
                    float(t["size"]),
                    int(t["timestamp_ms"]),
                    t.get("exchange"),
                    msg.partition,
                    msg.offset,
                )
            )
            if len(buffer) >= BATCH:
                _flush(conn, buffer, delta_path)
                consumer.commit()
                done += len(buffer)
                buffer = []
                if done >= count:
                    break
    finally:
        consumer.close()
        conn.close()
    return time.perf_counter() - started


def _flush(conn, rows: list[tuple], delta_path: str) -> None:
    with conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            INSERT,
            [(s, p, q, ts, _ts(ts), ex, False, part, off, 0) for s, p, q, ts, ex, part, off in rows],
            template="(%s, %s, %s, %s, to_timestamp(%s), %s, %s, %s, %s, %s)",
        )
    conn.commit()
    table = pa.table([[r[i] for r in rows] for i in range(5)], schema=DELTA_SCHEMA)
    write_deltalake(delta_path, table, mode="append", schema_mode="merge")


def _ts(ms: int) -> float:
    return ms / 1000.0
