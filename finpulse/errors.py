"""Every error FinPulse raises on purpose.

    FinpulseError                 root; carries one message meant for a person
    ├── ConfigError               a setting is missing or malformed (exit code 2)
    │   └── AccessRefused         a service refused the credentials, or TLS refused its certificate
    ├── ServiceUnavailable        Kafka, PostgreSQL or storage cannot be reached right now;
    │                             the worker loop waits and retries, the CLI says what to start
    ├── SinkRejected              a sink refused our rows for a reason that will not heal
    │   │                         (credentials, permissions, a table whose schema cannot take them)
    │   └── RulesChanged          the table refused rows its rules, as last read, let through
    ├── WorkerFailed              a worker process ended with an error; the supervisor reports it
    └── DataLoss                  a sink's position lies outside what the topic holds (a recreated
                                  topic, or retention deleted messages never ingested); exit code 6

All of them pickle by their arguments, so a worker can send one to its parent unchanged.
Anything else that escapes is a bug and should crash loudly.
"""

from __future__ import annotations


class FinpulseError(Exception):
    """Root of FinPulse's own errors. `str(err)` is the line we show the user."""

    exit_code = 1

    def __reduce__(self):  # keep subclasses and args intact across a process boundary
        return (type(self), self.args)


class ConfigError(FinpulseError):
    """A setting is missing or malformed; the message names the variable and what to put there."""

    exit_code = 2


class AccessRefused(ConfigError):
    """Kafka or Azure refused who we are (SASL credentials, ACLs, a SAS token) or TLS refused a
    server's certificate (an untrusted CA). No retry heals it, so it is reported at once; the
    message names the settings to check, never their values."""


class ServiceUnavailable(FinpulseError):
    """A service is down or unreachable. Recoverable: wait and try again."""

    exit_code = 3


class SinkRejected(FinpulseError):
    """A sink refuses the write for good (auth, permissions, incompatible schema)."""

    exit_code = 4


class RulesChanged(SinkRejected):
    """A sink refused rows that admission (finpulse.admission), with the rules it last read,
    let through: a rule was added meanwhile. The lane reads the rules again and retries once."""


class WorkerFailed(FinpulseError):
    """A worker process died with an error the supervisor could not heal by restarting it."""

    exit_code = 5


class DataLoss(FinpulseError):
    """Messages a sink never ingested are gone from the topic, or the topic is not the one the
    sink's positions belong to. Stops ingest and replay unless --allow-data-loss is given."""

    exit_code = 6


def first_line(exc: BaseException) -> str:
    """The first line of a driver's error message (libpq and delta-rs add detail lines)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
