"""Where log records go and how they look on stderr (`--log-format`), and how a worker's records
reach the supervisor.

Workers format nothing: their records cross to the supervisor over their link (`ToParent`) and
its handlers format them, so one choice of format covers every process of a run.
"""

from __future__ import annotations

import copy
import enum
import json
import logging
import sys
from datetime import UTC, datetime

from rich.console import Console

from finpulse.link import WorkerLink


class LogFormat(enum.StrEnum):
    text = "text"
    json = "json"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (ISO 8601, UTC), level, logger, process (pid),
    message, and exc_info (the traceback's text) when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class ToParent(logging.Handler):
    """A worker's log records, sent to the supervisor over its link (finpulse.link). The message
    is merged with its arguments (they may not pickle) but kept apart from the traceback, which
    travels as text in exc_text: the supervisor's formatter still sees a message and an exception,
    as for its own records."""

    def __init__(self, link: WorkerLink):
        super().__init__()
        self.link = link

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.link.tell("log", self.prepare(record))
        except Exception:  # a record that cannot be pickled must not stop the worker
            self.handleError(record)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.message = record.msg = record.getMessage()
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        if record.stack_info:
            record.stack_info = str(record.stack_info)
        return record


def setup(verbose: bool, log_format: LogFormat, console: Console) -> None:
    """Every record to stderr: JSON lines, or text (through `console` on a terminal, so records
    scroll above a live progress table instead of tearing it)."""
    handler: logging.Handler
    if log_format is LogFormat.json:  # one object per line for log shippers, terminal or not
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
    elif sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("[%(process)d] %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("librdkafka").setLevel(logging.WARNING)
    for noisy in ("httpx", "httpx2", "httpcore"):  # the schema registry client's every request
        logging.getLogger(noisy).setLevel(logging.WARNING)


def is_json() -> bool:
    """Whether setup() chose JSON lines."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
