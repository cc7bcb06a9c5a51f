"""Progress bars for long work: tqdm with an ETA, on a terminal only.

Every long phase (a campaign's rounds, a grid's cells, a study's trials, xTB labelling, the
epochs of a fit) uses :func:`bar`. It draws on standard error when that is a terminal and
the caller did not switch progress off (``progress=false``); otherwise it draws nothing, so
logs stay clean, and :func:`note` writes plain lines instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

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
