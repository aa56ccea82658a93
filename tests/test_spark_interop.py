"""Apache Spark reads the Delta table FinPulse writes with delta-rs (issue #12, point 4).

Spark 3.5 with delta-spark 3.2 is what the original project read `prices` with. After `produce`,
`ingest --drain` and `maintain`, Spark must find exactly the rows PostgreSQL holds: the same
(kafka_partition, kafka_offset, tick_index) keys as PostgreSQL and delta-rs, none twice, the same
values, the schema FinPulse declares and the `trade_date` partitioning.

Needs Java 17 on PATH (or JAVA_HOME) and the `spark` extra (pyspark, delta-spark), which
scripts/setup installs. The delta jars are resolved from Maven Central through Ivy at the first
run and kept in .stack/spark/ivy, so later runs start offline. Either missing fails the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path
from urllib.parse import unquote, urlparse

import psycopg
import pyarrow as pa
import pytest
from support import ROOT
from support.cli import env_for, finpulse
from support.sinks import delta_rows, pg_count

from finpulse.config import Settings
from finpulse.schema import LINEAGE
from finpulse.sinks.delta.azure import storage_options
from finpulse.sinks.delta.table import DELTA, PARTITION_BY

DELTA_PARTITION = PARTITION_BY[0]  # the table's one partition column

pytestmark = [
    pytest.mark.spark,
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    # pyspark reads collect()'s results from a local socket it leaves to the garbage collector
    # (pyspark.rdd._load_from_socket says so), which warns; the suite turns warnings into errors.
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]

TICKS = 20_000
ROUNDS = 4  # produce + ingest --drain rounds of TICKS // ROUNDS ticks
IVY_DIR = ROOT / ".stack" / "spark" / "ivy"  # Ivy's cache of the delta jars, reused by every run
SETUP_HINT = (
    "run `scripts/setup` (it installs the spark extra: pip install -e '.[spark]', pyspark 3.5 and delta-spark 3.2)"
)
JAVA_HINT = (
    "install Java 17 and put it on PATH or set JAVA_HOME (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
)

# How Spark names the types of FinPulse's Delta schema (DataType.simpleString()).
SPARK_TYPES = {
    pa.string(): "string",
    pa.float64(): "double",
    pa.int64(): "bigint",
    pa.int32(): "int",
    pa.bool_(): "boolean",
    pa.timestamp("us", tz="UTC"): "timestamp",
    pa.date32(): "date",
}
# Every column but the partition column, trade_time as epoch microseconds (exact in both sinks).
VALUES = ("symbol", "price", "size", "timestamp_ms", "exchange", "side", "broker_time")
PG_QUERY = f"""SELECT {", ".join(LINEAGE + VALUES)}, (extract(epoch FROM trade_time) * 1000000)::bigint
FROM prices_raw"""


def _java() -> str:
    """The java spark-submit will run; fails the test with what to install when there is none."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    where = f"JAVA_HOME={home}" if home else "PATH"
    if not java or not Path(java).is_file():
        pytest.fail(f"Spark needs Java, and there is no java on {where}: {JAVA_HINT}", pytrace=False)
    proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"{java} -version exited {proc.returncode}: {proc.stderr.strip()}; {JAVA_HINT}", pytrace=False)
    return next((line for line in proc.stderr.splitlines() if "version" in line), java)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """A local SparkSession with Delta Lake (2 cores, no UI, UTC); stopped, JVM included, at the end."""
    try:
        from delta import configure_spark_with_delta_pip
        from pyspark import SparkContext
        from pyspark.sql import SparkSession
    except ImportError as exc:
        missing = exc
    else:
        missing = None
    if missing is not None:
        pytest.fail(f"Spark is not installed ({missing}): {SETUP_HINT}", pytrace=False)
    java = _java()
    scratch = tmp_path_factory.mktemp("spark")
    IVY_DIR.mkdir(parents=True, exist_ok=True)
    builder = (
        SparkSession.builder.master("local[2]")
        .appName("finpulse-spark-interop")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.databricks.delta.snapshotPartitions", "2")  # log replay: 50 tasks by default
        .config("spark.driver.memory", "768m")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
        .config("spark.local.dir", str(scratch / "local"))
        .config("spark.jars.ivy", str(IVY_DIR))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
    )
    builder = configure_spark_with_delta_pip(builder)
    try:
        session, error = builder.getOrCreate(), None
    except Exception as exc:  # pyspark says only that the JVM exited; Spark's output says why
        session, error = None, exc
    if error is not None:
        jars = f"io.delta:delta-spark_2.12:{version('delta-spark')}"
        pytest.fail(
            f"Spark did not start with Delta: {str(error).strip()[:500]}\n"
            f"The delta jars ({jars}) come from Maven Central (repo1.maven.org) through Ivy and are kept in "
            f"{IVY_DIR} after the first run: check that Maven Central is reachable (Ivy's report is in the "
            f"captured stderr). Java found: {java}; Spark 3.5 needs Java 17 on PATH or JAVA_HOME.",
            pytrace=False,
        )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
        gateway = SparkContext._gateway
        if gateway is not None:  # the JVM exits when its stdin closes (see pyspark.java_gateway)
            gateway.shutdown()
            gateway.proc.stdin.close()
            gateway.proc.wait(timeout=60)
            SparkContext._gateway = SparkContext._jvm = None


def _pg_by_key(s: Settings) -> dict[tuple, tuple]:
    with psycopg.connect(s.postgres_conninfo()) as conn:
        rows = conn.execute(PG_QUERY).fetchall()
    by_key = {r[: len(LINEAGE)]: r[len(LINEAGE) :] for r in rows}
    assert len(by_key) == len(rows), "postgres: duplicate (kafka_partition, kafka_offset, tick_index) keys"
    return by_key


def _differences(got: dict, want: dict, limit: int = 5) -> str:
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    differ = sorted(k for k in got.keys() & want.keys() if got[k] != want[k])
    lines = [f"{len(missing)} keys missing, {len(extra)} extra, {len(differ)} with other values"]
    lines += [f"  missing {k}: postgres has {want[k]}" for k in missing[:limit]]
    lines += [f"  extra {k}: {got[k]}" for k in extra[:limit]]
    lines += [f"  {k}: spark {got[k]} != postgres {want[k]}" for k in differ[:limit]]
    return "\n".join(lines)


def _file_names(uris) -> set[str]:
    return {Path(unquote(urlparse(u).path)).name for u in uris}


def test_spark_reads_exactly_the_rows_and_keys_finpulse_wrote(isolated, spark):
    from delta.tables import DeltaTable as SparkDeltaTable
    from deltalake import DeltaTable
    from pyspark.sql import functions as F

    uri = isolated.delta_uri
    env = env_for(isolated)
    for seed in range(ROUNDS):  # separate drains: several small files for maintain to compact
        finpulse("produce", "--count", str(TICKS // ROUNDS), "--seed", str(seed), env=env)
        out = finpulse("ingest", "--drain", "--workers", "2", env=env, timeout=180).stdout
        assert f"ingested {TICKS // ROUNDS:,} ticks" in out
    files_before = len(DeltaTable(uri, storage_options=storage_options(isolated)).file_uris())
    finpulse("maintain", env=env, timeout=180)
    rs_table = DeltaTable(uri, storage_options=storage_options(isolated))
    live = rs_table.file_uris()
    on_disk = list(Path(uri).glob(f"{DELTA_PARTITION}=*/*.parquet"))
    assert len(live) < files_before <= len(on_disk), "maintain compacted nothing: Spark would read a trivial log"
    assert (Path(uri) / "_delta_log" / "_last_checkpoint").is_file(), "maintain wrote no checkpoint"

    # What FinPulse wrote: PostgreSQL and delta-rs agree key by key; Spark is compared with both.
    pg = _pg_by_key(isolated)
    assert len(pg) == TICKS and pg_count(isolated, "prices_rejected") == 0
    rs_keys = delta_rows(isolated, columns=LINEAGE)
    assert len(set(rs_keys)) == len(rs_keys) == TICKS, "delta-rs: duplicate keys or a wrong row count"
    assert set(rs_keys) == pg.keys(), "delta-rs and PostgreSQL hold different keys"

    df = spark.read.format("delta").load(uri)

    # The schema FinPulse declares, as Spark sees it, and the trade_date partitioning.
    assert [(f.name, f.dataType.simpleString()) for f in df.schema.fields] == [
        (f.name, SPARK_TYPES[f.type]) for f in DELTA
    ]
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{uri}`").first()
    assert detail["format"] == "delta" and detail["partitionColumns"] == [DELTA_PARTITION]
    # The same snapshot as delta-rs (read from maintain's checkpoint): the live files only, not the
    # compacted-away ones vacuum keeps for 7 days.
    assert SparkDeltaTable.forPath(spark, uri).history(1).first()["version"] == rs_table.version()
    assert _file_names(df.inputFiles()) == _file_names(live), "Spark and delta-rs see other files"
    assert detail["numFiles"] == len(live)

    # Every row once, with PostgreSQL's key and values.
    rows = df.select(*LINEAGE, *VALUES, F.unix_micros("trade_time")).collect()
    assert len(rows) == df.count() == TICKS
    by_key = {tuple(r[: len(LINEAGE)]): tuple(r[len(LINEAGE) :]) for r in rows}
    assert len(by_key) == len(rows), "spark: duplicate (kafka_partition, kafka_offset, tick_index) keys"
    assert by_key.keys() == set(rs_keys), "Spark and delta-rs see different keys"
    assert by_key == pg, _differences(by_key, pg)

    # trade_date is the UTC date of trade_time in every row, and a partition filter finds each date's rows.
    assert df.where(F.col(DELTA_PARTITION) != F.to_date("trade_time")).count() == 0
    per_date = {r[0]: r[1] for r in df.groupBy(DELTA_PARTITION).count().collect()}
    with psycopg.connect(isolated.postgres_conninfo()) as conn:
        pg_dates = dict(
            conn.execute("SELECT (trade_time AT TIME ZONE 'UTC')::date, count(*) FROM prices_raw GROUP BY 1").fetchall()
        )
    assert per_date == pg_dates
    for day, count in pg_dates.items():
        assert df.where(F.col(DELTA_PARTITION) == F.lit(day)).count() == count
