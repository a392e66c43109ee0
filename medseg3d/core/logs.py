"""Console logging that follows ``sys.stdout``/``sys.stderr`` as they are when a record is emitted.

A ``logging.StreamHandler`` keeps the stream it was given. The bundles' ``logging.conf`` (read by MONAI's
``ConfigWorkflow`` with ``logging.config.fileConfig``, which accepts only ``logging`` classes) and
``prep_brats`` configure the root logger once per process; when that happens while ``sys.stdout`` is
redirected (a caller capturing a command's output, a test runner) the handler would keep writing to that
redirected stream after it is closed, and every later log record of the process ends in a "--- Logging
error ---" traceback. ``ConsoleHandler`` looks the stream up at every record instead, and
``follow_console()`` (called after MONAI has read a bundle's ``logging.conf``) swaps the root logger's
handlers on the current stdout/stderr for it.

A record logged with an exception caused by bad input (an ``InputError`` anywhere in its chain, e.g. a scan
with NaN voxels met by a transform while MONAI's trainer logs the exception) is written as one line that ends
with the error, without the traceback: the error names the file and what was expected, and a page of
MONAI and ignite frames would bury it.

>>> import io, contextlib, logging
>>> handler = ConsoleHandler("stdout")
>>> record = logging.makeLogRecord({"msg": "hello", "levelno": logging.INFO})
>>> buffer = io.StringIO()
>>> with contextlib.redirect_stdout(buffer):
...     handler.emit(record)
>>> buffer.getvalue()
'hello\\n'
"""

from __future__ import annotations

import logging
import sys

from medseg3d.core.errors import input_error_in


class ConsoleHandler(logging.StreamHandler):
    """``StreamHandler`` on ``sys.<name>`` (``stdout`` or ``stderr``) as it is at each record."""

    def __init__(self, name: str = "stdout") -> None:
        if name not in ("stdout", "stderr"):
            raise ValueError(f"name must be 'stdout' or 'stderr', got {name!r}")
        self._stream_name = name
        super().__init__()

    @property
    def stream(self):  # noqa: D102 (the current sys.stdout / sys.stderr)
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns one: the current one is used instead
        pass

    def emit(self, record: logging.LogRecord) -> None:
        error = input_error_in(record.exc_info[1]) if record.exc_info else None
        if error is not None:
            message = record.getMessage()
            text = message if str(error) in message else f"{message}: {error}"
            record = logging.makeLogRecord({**record.__dict__, "msg": text, "args": None, "exc_info": None,
                                            "exc_text": None})  # fmt: skip
        super().emit(record)


def follow_console(logger: logging.Logger | None = None) -> None:
    """Replace the plain ``StreamHandler``s on the current ``sys.stdout`` or ``sys.stderr`` by ``ConsoleHandler``s
    with the same level, formatter and filters: on ``logger``, or (None) on the root logger and every logger
    that has one (MONAI's ``StatsHandler`` and module loggers keep their own stdout handler)."""
    loggers = (
        [logger]
        if logger is not None
        else [logging.getLogger()]
        + [found for found in list(logging.Logger.manager.loggerDict.values()) if isinstance(found, logging.Logger)]
    )
    for each in loggers:
        _follow(each)


def _follow(logger: logging.Logger) -> None:
    for index, handler in enumerate(list(logger.handlers)):
        if type(handler) is not logging.StreamHandler:
            continue
        name = "stdout" if handler.stream is sys.stdout else "stderr" if handler.stream is sys.stderr else None
        if name is None:
            continue
        console = ConsoleHandler(name)
        console.setLevel(handler.level)
        console.setFormatter(handler.formatter)
        for f in handler.filters:
            console.addFilter(f)
        logger.handlers[index] = console
