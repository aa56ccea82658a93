"""Where ticks land. Each sink writes rows and its own offsets in one atomic step."""

from finpulse.sinks.base import Sink

__all__ = ["Sink"]
