"""FinPulse: Kafka ticks landed exactly once in PostgreSQL and Delta Lake."""

from finpulse.config import Settings, load_settings
from finpulse.decode import Decoder, Messages
from finpulse.errors import ConfigError, FinpulseError, ServiceUnavailable, SinkRejected, WorkerFailed

__all__ = [
    "ConfigError",
    "Decoder",
    "FinpulseError",
    "Messages",
    "ServiceUnavailable",
    "Settings",
    "SinkRejected",
    "WorkerFailed",
    "load_settings",
]
__version__ = "0.1.0"
