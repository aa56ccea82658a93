"""One frozen Settings object, read from the environment and `.env`; CLI flags override it.

Environment names are those of `.env.example`. Tuning knobs that the original project did not
have are prefixed `FINPULSE_`. Every default carries a comment saying why it is what it is.

This module is the bottom layer: it knows the settings' names, types and defaults, nothing of the
sinks, Kafka's client or Azure's sign-in. What is checked against those is checked where they live
(finpulse.sinks.chosen for FINPULSE_SINKS, kafka_config for the client properties file and its
bootstrap servers, sinks/delta/azure.py for the Azure credentials).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from finpulse.errors import ConfigError

#: Embedded Delta location used when neither DELTA_TABLE_URI nor Azure credentials are set.
LOCAL_DELTA_PATH = Path("data") / "delta" / "prices"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_ignore_empty=True,  # `DELTA_TABLE_URI=` in .env means "not set", not ""
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        hide_input_in_errors=True,  # a malformed secret must never be echoed back
    )

    # --- Kafka: names and defaults of the original project ---
    # The local broker's host port. When not set, KAFKA_CONFIG_FILE's bootstrap.servers counts
    # (kafka_config.bootstrap), then this default.
    kafka_bootstrap_servers: str = "localhost:29092"
    kafka_topic: str = Field("raw_prices", min_length=1)
    kafka_group_id: str = Field("finpulse-price-consumer", min_length=1)
    # Security (finpulse.kafka_config): every client FinPulse makes gets these. Unset means the
    # librdkafka default (PLAINTEXT, no SASL). Named settings win over KAFKA_CONFIG_FILE's lines.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str | None = None  # PEM file of the CA(s) that signed the brokers' certificates
    kafka_ssl_certificate_location: str | None = None  # client certificate (mutual TLS), PEM
    kafka_ssl_key_location: str | None = None  # its private key, PEM
    kafka_ssl_key_password: SecretStr | None = None
    # A Java-style client properties file (what Confluent Cloud, Event Hubs or MSK hand out).
    kafka_config_file: Path | None = None

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    # --- PostgreSQL: the original project's variables ---
    postgres_host: str = "localhost"
    postgres_port: int = Field(5433, ge=1, le=65535)  # 5433 keeps clear of a system PostgreSQL
    postgres_db: str = "finpulse"
    postgres_user: str = "finpulse"
    postgres_password: SecretStr | None = None  # required by every command that touches PostgreSQL
    # Tables live in this schema; tests give each run its own so they never see each other's rows.
    postgres_schema: str = Field("public", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # One libpq URL (postgresql://user:password@host:port/db?sslmode=...) instead of the five above.
    postgres_url: SecretStr | None = None
    # TLS: libpq's own names. verify-full checks the server's certificate and its host name.
    postgres_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    postgres_sslrootcert: str | None = None  # CA file for verify-ca / verify-full
    postgres_sslcert: str | None = None  # client certificate (certificate authentication)
    postgres_sslkey: str | None = None
    # A statement running longer is cancelled (and retried as an outage): a stuck lock or a server in
    # trouble cannot hang a writer for ever. 2 minutes is far above any write or read FinPulse makes;
    # 0 turns it off.
    postgres_statement_timeout_ms: int = Field(120_000, ge=0)

    # --- Delta Lake and Azure ---
    delta_table_uri: str | None = None  # wins over the Azure and embedded defaults when set
    azure_storage_account_name: str | None = None
    azure_storage_account_key: SecretStr | None = None
    # The other ways in, for accounts that forbid keys (sinks/delta/azure.py; docs/security.md's table):
    azure_storage_sas_token: SecretStr | None = None
    azure_client_id: str | None = None  # service principal, workload identity, user-assigned identity
    azure_client_secret: SecretStr | None = None  # service principal
    azure_tenant_id: str | None = None
    azure_federated_token_file: str | None = None  # workload identity (set by AKS)
    azure_use_managed_identity: bool = False  # the VM's or container's managed identity
    azure_container_name: str = "delta-lake"  # the original project's container
    azure_storage_use_emulator: bool = False  # true: talk to Azurite on 127.0.0.1:10000

    # --- Ingest tuning (FINPULSE_*) ---
    # 5 ticks, as the original consumer: a flush *trigger*, not a cap; whatever piles up behind
    # an in-flight write joins the next one, so a backlog still drains in large writes.
    batch_size: int = Field(5, ge=1, le=1_000_000, validation_alias=AliasChoices("FINPULSE_BATCH_SIZE", "batch_size"))
    # 100 ms bounds how stale a partial batch can get on a trickle of ticks.
    linger_ms: int = Field(100, ge=0, le=600_000, validation_alias=AliasChoices("FINPULSE_LINGER_MS", "linger_ms"))
    # Ticks decoded but not yet durable in both sinks before consumption pauses: about 70 bytes
    # of Arrow rows each, plus what writing them takes. Well above Delta's size trigger
    # (delta_flush_ticks): reading goes on while a full-size Delta write is under way (at 150,000
    # a drain paused during many of them, and ran up to 15% slower for 8 MiB less at its peak).
    max_inflight_ticks: int = Field(
        250_000, ge=1_000, validation_alias=AliasChoices("FINPULSE_MAX_INFLIGHT_TICKS", "max_inflight_ticks")
    )
    # The same bound in bytes: raw rejects carry their message (up to FINPULSE_MAX_MESSAGE_BYTES
    # each), so a topic of large bad messages is bounded too. 256 MiB keeps a worker well inside
    # a container's memory while a backlog of canonical ticks is still limited by the tick count.
    max_inflight_bytes: int = Field(
        256 << 20, ge=1 << 20, validation_alias=AliasChoices("FINPULSE_MAX_INFLIGHT_BYTES", "max_inflight_bytes")
    )
    # A rebalance waits this long for writes already handed to the sinks before it lets the
    # partitions go. 30 s rides out a sink blip; past it the new owner re-reads, and each sink's
    # guard skips whatever the old owner still lands.
    rebalance_grace_ms: int = Field(
        30_000, ge=0, le=600_000, validation_alias=AliasChoices("FINPULSE_REBALANCE_GRACE_MS", "rebalance_grace_ms")
    )
    # Spark's failOnDataLoss, inverted: off by default, so a recreated topic or a retention gap
    # stops ingest and replay with one line instead of skipping messages silently. On: carry on
    # from the earliest offset still held and record the gap (status and verify report it).
    allow_data_loss: bool = Field(False, validation_alias=AliasChoices("FINPULSE_ALLOW_DATA_LOSS", "allow_data_loss"))
    # Delta's own flush policy (PostgreSQL keeps batch size and linger, it is the low-latency store):
    # a commit at most every second per worker, so a live trickle makes one file per date partition
    # per second instead of one per batch of 5; a backlog still commits as soon as this many ticks
    # wait, so it drains in large writes (100k ticks are ~20 MB of Arrow rows, one Parquet file).
    delta_flush_ms: int = Field(
        1000, ge=0, le=600_000, validation_alias=AliasChoices("FINPULSE_DELTA_FLUSH_MS", "delta_flush_ms")
    )
    delta_flush_ticks: int = Field(
        100_000, ge=1, validation_alias=AliasChoices("FINPULSE_DELTA_FLUSH_TICKS", "delta_flush_ticks")
    )
    # Who commits Delta writes: "process" (default), one committer per `finpulse ingest` process
    # commits every worker's files together, once per FINPULSE_DELTA_FLUSH_MS; "worker", each
    # worker commits its own writes (commits grow with --workers).
    delta_committer: Literal["process", "worker"] = Field(
        "process", validation_alias=AliasChoices("FINPULSE_DELTA_COMMITTER", "delta_committer")
    )
    # Background compaction during ingest: when this many Delta files are small (under 16 MiB),
    # pack them. 200 files is a few minutes of a trickle with 4 workers; 0 turns it off (then run
    # `finpulse maintain` on a schedule). Checked every FINPULSE_AUTO_COMPACT_EVERY_S seconds.
    auto_compact_files: int = Field(
        200, ge=0, validation_alias=AliasChoices("FINPULSE_AUTO_COMPACT_FILES", "auto_compact_files")
    )
    auto_compact_every_s: float = Field(
        60.0, gt=0, le=86_400, validation_alias=AliasChoices("FINPULSE_AUTO_COMPACT_EVERY_S", "auto_compact_every_s")
    )
    # Which sinks ingest writes to: "all" (the product), or a comma list of kinds of
    # finpulse.sinks.KINDS (postgres, delta), for a back-fill or a deployment that needs fewer.
    sinks: str = Field("all", min_length=1, validation_alias=AliasChoices("FINPULSE_SINKS", "sinks"))
    # One worker process per partition by default (None = the topic's partition count).
    workers: int | None = Field(None, ge=1, le=256, validation_alias=AliasChoices("FINPULSE_WORKERS", "workers"))
    # Also send every rejected message to this Kafka topic (at least once), for tools that
    # watch a dead-letter topic; prices_rejected stays the exactly-once record either way.
    dlq_topic: str | None = Field(None, min_length=1, validation_alias=AliasChoices("FINPULSE_DLQ_TOPIC", "dlq_topic"))
    # Messages larger than this are rejected unread: 1 MiB, Kafka's own default message size.
    max_message_bytes: int = Field(
        1 << 20, ge=1024, validation_alias=AliasChoices("FINPULSE_MAX_MESSAGE_BYTES", "max_message_bytes")
    )
    # --- Schema registry (finpulse/registry.py): Avro, Protobuf and JSON Schema messages ---
    # Confluent-framed messages (a zero byte and a schema id first, or the id in a header) are read
    # through it; plain JSON beside them needs none. KAFKA_CONFIG_FILE's schema.registry.url and
    # basic.auth.user.info lines count too, these win over them.
    schema_registry_url: str | None = None
    schema_registry_basic_auth_user_info: SecretStr | None = None  # user:password
    schema_registry_ssl_ca_location: str | None = None  # PEM of the CA that signed the registry's certificate
    schema_registry_ssl_certificate_location: str | None = None  # client certificate (mutual TLS)
    schema_registry_ssl_key_location: str | None = None
    # Avro ticks of a flat schema are read a batch at once by polars (decode/avro_batch.py): 5x the
    # rate of fastavro's message by message, for about 55 MiB more per worker that reads Avro (its
    # library's pages, loaded on the first such schema). False reads each message with fastavro.
    avro_batch_decode: bool = Field(True, validation_alias=AliasChoices("FINPULSE_AVRO_BATCH", "avro_batch_decode"))
    # A field mapping (TOML, docs/feeds.md#field-mappings) for records of no known feed shape:
    # which field is the symbol, price, size, trade time...
    mapping_file: Path | None = Field(None, validation_alias=AliasChoices("FINPULSE_MAPPING", "mapping_file"))

    # --- Trades (finpulse/dedup) ---
    # A trade whose (exchange, symbol, trade_id) landed within this much trade time before it is a
    # duplicate (a re-send, an A/B feed) and lands in neither sink. 24 hours covers a collector's
    # reconnect re-sends and a day's A/B feed; "0" turns duplicate removal and gap tracking off.
    # Seconds, or a number with s, m, h or d.
    dedup_window_s: float = Field(
        86_400.0, ge=0, validation_alias=AliasChoices("FINPULSE_DEDUP_WINDOW", "dedup_window_s")
    )
    # Also keep each duplicate as a row of prices_duplicates (PostgreSQL), with its lineage.
    keep_duplicates: bool = Field(False, validation_alias=AliasChoices("FINPULSE_KEEP_DUPLICATES", "keep_duplicates"))
    # Feeds whose trade ids are consecutive per symbol: their holes are sequence gaps (docs/feeds.md).
    sequence_feeds: str = Field(
        "canonical,binance,coinbase,coinbase-advanced,kraken",
        validation_alias=AliasChoices("FINPULSE_SEQUENCE_FEEDS", "sequence_feeds"),
    )
    # Trades of one symbol arriving out of order within this much trade time are reordering, not a
    # gap: 2 s covers a collector's reconnect and Kafka's per-partition batching.
    sequence_reorder_ms: int = Field(
        2000, ge=0, le=3_600_000, validation_alias=AliasChoices("FINPULSE_SEQUENCE_REORDER_MS", "sequence_reorder_ms")
    )
    # Text and non-consecutive trade ids are held as 16 bytes each; a partition keeps at most this
    # many (the newest): 1M is 16 MiB, about 8 minutes of a 2k ticks/s partition.
    dedup_max_ids: int = Field(
        1_000_000, ge=1000, validation_alias=AliasChoices("FINPULSE_DEDUP_MAX_IDS", "dedup_max_ids")
    )

    @field_validator("dedup_window_s", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            from finpulse.durations import seconds

            return seconds(value)
        return value

    def sequence_feed_names(self) -> set[str]:
        return {n.strip().lower() for n in self.sequence_feeds.split(",") if n.strip()}

    # --- PostgreSQL as the hot store (sinks/postgres/tables.py) ---
    # prices_raw has a partition per day; init and maintain keep this many days ahead made, so a
    # day's ticks never wait in the default partition even if maintain does not run for a week.
    pg_days_ahead: int = Field(
        7, ge=1, le=366, validation_alias=AliasChoices("FINPULSE_PG_DAYS_AHEAD", "pg_days_ahead")
    )
    # maintain drops prices_raw's days older than this many days, each only once the Delta table
    # holds every row of it (Delta is the store of record for all history). 0: keep every day.
    pg_retention_days: int = Field(
        0, ge=0, validation_alias=AliasChoices("FINPULSE_PG_RETENTION_DAYS", "pg_retention_days")
    )
    # maintain deletes 1-minute bars older than this many days; 0 keeps them all (a year of bars of
    # 16 symbols is ~8M small rows).
    bars_retention_days: int = Field(
        0, ge=0, validation_alias=AliasChoices("FINPULSE_BARS_RETENTION_DAYS", "bars_retention_days")
    )

    # Prometheus metrics, /healthz and /readyz from `finpulse ingest` on this port (None: off).
    metrics_port: int | None = Field(
        None, ge=0, le=65535, validation_alias=AliasChoices("FINPULSE_METRICS_PORT", "metrics_port")
    )
    # The address it binds: all interfaces, as exporters do, so Prometheus can scrape from another
    # host or container; 127.0.0.1 keeps it on this host (a sidecar, an agent on the node).
    metrics_host: str = Field(
        "0.0.0.0", min_length=1, validation_alias=AliasChoices("FINPULSE_METRICS_HOST", "metrics_host")
    )

    # ------------------------------------------------------------------ derived values
    def postgres_conninfo(self) -> str:
        """libpq connection string; raises ConfigError when the password is missing."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        base: dict[str, Any]
        if self.postgres_url is not None:
            try:
                base = conninfo_to_dict(self.postgres_url.get_secret_value())
            except Exception:
                raise ConfigError(
                    "POSTGRES_URL is not a valid libpq URL: expected postgresql://user:password@host:port/db"
                ) from None
        elif self.postgres_password is None and self.postgres_sslcert is None:
            raise ConfigError(
                "POSTGRES_PASSWORD is not set: put the finpulse user's password in .env "
                "(scripts/setup copies .env.example, whose local-stack value is 'finpulse')."
            )
        else:
            base = {
                "host": self.postgres_host,
                "port": self.postgres_port,
                "dbname": self.postgres_db,
                "user": self.postgres_user,
                "password": self.postgres_password.get_secret_value() if self.postgres_password else None,
            }
        tls = {
            "sslmode": self.postgres_sslmode,
            "sslrootcert": self.postgres_sslrootcert,
            "sslcert": self.postgres_sslcert,
            "sslkey": self.postgres_sslkey,
        }
        statement_timeout = f" -c statement_timeout={self.postgres_statement_timeout_ms}"
        return make_conninfo(
            "",
            **{k: v for k, v in base.items() if v is not None},
            **{k: v for k, v in tls.items() if v is not None},  # named settings win over the URL's
            application_name="finpulse",
            options=f"-c search_path={self.postgres_schema}{statement_timeout}",
            connect_timeout=5,
            # A peer that vanished (a failover, a dropped NAT entry) is noticed within about a
            # minute instead of hanging a writer: keepalives while idle, and a cap on how long
            # sent data may stay unacknowledged while writing.
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
            tcp_user_timeout=60_000,
        )

    def postgres_display(self) -> str:
        """Where PostgreSQL is, safe to print (no password)."""
        if self.postgres_url is not None:
            from psycopg.conninfo import conninfo_to_dict

            try:
                d = conninfo_to_dict(self.postgres_url.get_secret_value())
            except Exception:
                return "postgresql://(POSTGRES_URL)"
            return f"postgresql://{d.get('user', '')}@{d.get('host', '')}:{d.get('port', 5432)}/{d.get('dbname', '')}"
        return f"postgresql://{self.postgres_user}@{self.postgres_host}:{self.postgres_port}/{self.postgres_db}"

    @property
    def azure_configured(self) -> bool:
        """An account name and something to sign in with: Delta's default location is then Azure
        (which way, and whether it is complete, sinks/delta/azure.py checks)."""
        ways = (
            self.azure_storage_account_key,
            self.azure_storage_sas_token,
            self.azure_client_secret,
            self.azure_federated_token_file,
        )
        return bool(
            self.azure_storage_account_name and (any(w is not None for w in ways) or self.azure_use_managed_identity)
        )

    @property
    def delta_uri(self) -> str:
        if self.delta_table_uri:
            uri = self.delta_table_uri
            return uri if "://" in uri else str(Path(uri).resolve())
        if self.azure_configured:
            return f"abfss://{self.azure_container_name}@{self.azure_storage_account_name}.dfs.core.windows.net/prices"
        return str(LOCAL_DELTA_PATH.resolve())


# Which variable a field is read from, for error messages.
def _env_name(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias = getattr(info, "validation_alias", None) if info else None
    if isinstance(alias, AliasChoices) and alias.choices:
        return str(alias.choices[0])
    return field.upper()


def load_settings(**overrides: Any) -> Settings:
    """Settings from env and .env with `overrides` (CLI flags; None means "not given") on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    # FINPULSE_ENV_FILE: one more file read over .env (the environment still wins over both), e.g.
    # the secured local stack's .stack/secure.env.
    extra = os.environ.get("FINPULSE_ENV_FILE")
    if extra and not Path(extra).is_file():
        raise ConfigError(f"FINPULSE_ENV_FILE names {extra}, which is not a file")
    try:
        return Settings(_env_file=(".env", extra) if extra else ".env", **given)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            source = f"--{field.replace('_', '-')}" if field in given else _env_name(field)
            problems.append(f"{source}: {err['msg']}")
        raise ConfigError(
            "invalid configuration: " + "; ".join(problems) + " (see .env.example for each variable)"
        ) from None
