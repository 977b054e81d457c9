"""Structured logs: one JSON object per line, with the request id of the request being served."""

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                       default=None)

# Attributes every LogRecord has; anything else passed in `extra=` is a field of the line.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            line["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key != "color_message" and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class OurHandler(logging.StreamHandler):
    """Marks the handler this module installed, so configuring twice changes nothing."""


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Route every logger (ours, uvicorn's, arq's) through one handler on stderr."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if any(isinstance(h, OurHandler) for h in root.handlers):
        return
    handler = OurHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.handlers[:] = [h for h in root.handlers if type(h) is not logging.StreamHandler
                        or getattr(h, "stream", None) not in (sys.stderr, sys.stdout)]
    root.addHandler(handler)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq", "arq.worker"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # replaced by our request lines
    for noisy in ("alembic", "botocore", "boto3", "s3transfer", "urllib3", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
