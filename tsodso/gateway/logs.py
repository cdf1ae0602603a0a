"""structlog set-up: JSON lines with the actor and run bound by each gateway."""

import logging
import sys
from pathlib import Path
from typing import TextIO, cast

import structlog


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time (a test runner may swap and close its own)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(path: Path | None = None, *, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Events as JSON lines into ``path`` (appended), or to ``stream`` (stderr) when no path is given."""
    out: TextIO = open(path, "a", buffering=1) if path else (stream or cast(TextIO, _CurrentStderr()))  # noqa: SIM115
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
