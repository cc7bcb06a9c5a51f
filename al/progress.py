"""Progress bars for long work: tqdm with an ETA, on a terminal only.

Every long phase (a campaign's rounds, a grid's cells, a study's trials, xTB labelling, the
epochs of a fit, a prediction over many molecules) uses :func:`bar`. It draws on standard
error when that is a terminal and the caller did not switch progress off
(``progress=false``); otherwise it draws nothing, so logs stay clean, and :func:`note`
writes plain lines instead.

Log lines and bars share the terminal: :func:`guard_logging` makes every handler that
writes (the root's, MLflow's, Optuna's) write through :class:`AboveBars`, which clears the
bars, writes the line and redraws them, as ``tqdm.write`` does.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm.auto import tqdm

#: ``AL_PROGRESS=0`` switches every bar off (e.g. under a scheduler that fakes a terminal).
ENV = "AL_PROGRESS"


def shown(requested: bool = True) -> bool:
    """Whether bars are drawn: requested, not switched off, and standard error a terminal."""
    if not requested or os.environ.get(ENV, "1").lower() in ("0", "false", "no", "off"):
        return False
    return sys.stderr.isatty()


def bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    leave: bool = True,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar with an ETA (elapsed<remaining) that is silent unless :func:`shown`."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=leave,
        disable=not shown(enabled),
        dynamic_ncols=True,
        file=sys.stderr,
        **kwargs,
    )


def note(progress: tqdm, line: str, echo: Any = None) -> None:
    """Print ``line`` above a drawn bar, or hand it to ``echo`` (e.g. a logger) without one."""
    if not progress.disable:
        progress.write(line, file=sys.stderr)
    elif echo is not None:
        echo(line)


#: Libraries whose loggers write through handlers of their own instead of the root's.
LIBRARY_LOGGERS = ("mlflow", "alembic", "huey", "sqlalchemy.engine", "optuna")


class AboveBars:
    """A text stream that writes above the bars drawn on standard error.

    Each write clears the bars, writes the text and redraws them (``tqdm.write``), so a log
    line gets a line of its own and a bar's line is never cut. Everything else is the
    wrapped stream's.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        """Write ``text`` to the wrapped stream with the bars cleared around it."""
        with tqdm.external_write_mode(file=sys.stderr):
            return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def guard_logging(
    mask: type[logging.Filter], loggers: Iterable[str] = ("", *LIBRARY_LOGGERS)
) -> None:
    """Give every handler of ``loggers`` (``""``: the root) a ``mask`` filter (once) and,
    when bars are :func:`shown`, a stream that writes above them (:class:`AboveBars`).

    Idempotent; a logger a library has not configured yet (e.g. Optuna's before its import)
    has no handler and is left alone. With no terminal the lines stay plain.
    """
    above = shown()
    for name in loggers:
        for handler in logging.getLogger(name or None).handlers:
            if not any(isinstance(f, mask) for f in handler.filters):
                handler.addFilter(mask())
            if (
                above
                and isinstance(handler, logging.StreamHandler)
                and not isinstance(handler, logging.FileHandler)  # a file has no bars
                and not isinstance(handler.stream, AboveBars)
            ):
                handler.setStream(AboveBars(handler.stream))
