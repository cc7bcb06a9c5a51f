"""Bars and log lines on a terminal: real tqdm, real logging, a stream that says it is a tty."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator

import pytest
import torch
from tqdm.auto import tqdm

from al import progress
from al.config import SecretMaskingFilter
from al.models import build_model
from al.models.config import ModelConfig
from al.training.config import FitConfig
from al.training.fit import predict
from al.uncertainty import UNCERTAINTIES, build_surrogate

SMALL = ModelConfig(hidden=16, filter_groups=4, n_interactions=1, dropout=0.1)


class Terminal(io.StringIO):
    """Standard error as a terminal: what the bars draw on."""

    def isatty(self) -> bool:
        return True


def _terminal(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    """Standard error a terminal, bars on (set in the test itself: pytest's capture sets
    ``sys.stderr`` again between a fixture and its test)."""
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.delenv(progress.ENV, raising=False)
    return screen


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own, not propagating (its console handler comes from :func:`_console`)."""
    log = logging.getLogger("al.test_progress")
    log.propagate, log.level = False, logging.INFO
    yield log
    log.handlers = []


def _console(log: logging.Logger) -> logging.StreamHandler:
    """A console handler on standard error, as the CLI's root has."""
    handler = logging.StreamHandler(sys.stderr)
    log.addHandler(handler)
    return handler


def _visible(screen: str) -> list[str]:
    """The lines as a terminal leaves them: what follows the last carriage return of each."""
    return [line.split("\r")[-1].rstrip() for line in screen.split("\n")]


def test_a_log_line_goes_above_a_drawn_bar_on_a_line_of_its_own(monkeypatch, logger) -> None:
    terminal = _terminal(monkeypatch)
    _console(logger)
    progress.guard_logging(SecretMaskingFilter, [logger.name])
    with progress.bar(total=4, desc="work", unit="mol") as bar:
        bar.update(1)
        logger.warning("event=halfway uri=http://alice:pw123@host:5000")
        bar.update(3)
    lines = _visible(terminal.getvalue())
    assert "event=halfway uri=http://alice:***@host:5000" in lines  # the whole line, masked
    assert "pw123" not in terminal.getvalue()
    # the bar was cleared (blanked) before the line and redrawn below it
    assert re.search(r"\r +\revent=halfway[^\n]*\n\rwork: ", terminal.getvalue())
    assert re.match(r"work: 100%.*4/4", lines[-2]) and lines[-1] == ""


def test_with_no_terminal_lines_stay_plain_and_nothing_is_drawn(
    monkeypatch: pytest.MonkeyPatch, logger
) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    handler = _console(logger)
    progress.guard_logging(SecretMaskingFilter, [logger.name])
    assert handler.stream is pipe  # as it was
    with progress.bar(total=2, desc="work") as bar:
        bar.update(1)
        logger.info("event=x password=s3cret uri=http://bob:s3cret@h")
        bar.update(1)
    assert pipe.getvalue() == "event=x password=*** uri=http://bob:***@h\n"


def test_guarding_twice_adds_one_filter_and_one_wrapper(monkeypatch, logger) -> None:
    terminal = _terminal(monkeypatch)
    handler = _console(logger)
    progress.guard_logging(SecretMaskingFilter, [logger.name])
    progress.guard_logging(SecretMaskingFilter, [logger.name])
    assert len(handler.filters) == 1
    assert isinstance(handler.stream, progress.AboveBars)
    assert handler.stream.stream is terminal


def test_predict_over_n_molecules_advances_a_bar_to_n(qm9) -> None:
    torch.set_num_threads(1)
    model = build_model("schnet", **SMALL.model_kwargs())
    counter = tqdm(total=10, file=io.StringIO())
    energy, _ = predict(model.eval(), qm9, torch.arange(10), batch_size=4, counter=counter)
    assert energy.shape == (10,) and counter.n == 10


@pytest.mark.parametrize("name", list(UNCERTAINTIES))
def test_a_surrogate_shows_a_bar_of_its_passes_over_the_molecules(
    name: str, qm9, monkeypatch
) -> None:
    terminal = _terminal(monkeypatch)
    torch.set_num_threads(1)
    fit = FitConfig(epochs=1, batch_size=8, progress=True)
    s = build_surrogate(name, SMALL, fit, torch.device("cpu"), ensemble_size=2, mc_samples=2)
    s.model = s._build()
    assert len(s.predict(qm9, torch.arange(10), batch_size=4)) == 10
    n = 10 * s.passes
    assert re.search(rf"\rpredict: +0%.* 0/{n} ", terminal.getvalue())
    assert _visible(terminal.getvalue())[-1] == ""  # leave=False: the bar is gone after


def test_predict_draws_nothing_off_a_terminal_or_within_one_batch(
    qm9, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = _terminal(monkeypatch)
    torch.set_num_threads(1)
    fit = FitConfig(epochs=1, batch_size=8, progress=True)
    s = build_surrogate("ensemble", SMALL, fit, torch.device("cpu"), ensemble_size=2)
    s.model = s._build()
    s.predict(qm9, torch.arange(4), batch_size=4)  # one batch: nothing to show
    monkeypatch.setenv(progress.ENV, "0")
    s.predict(qm9, torch.arange(10), batch_size=4)
    assert terminal.getvalue() == ""


def test_optuna_lines_are_masked_and_go_above_the_bars(monkeypatch, tmp_path) -> None:
    """Optuna's own console handler (pytest may have put its capture handlers beside it,
    which write to no terminal and are not looked at)."""
    import optuna
    import optuna.logging as optuna_logging

    from hpo.config import HPOConfig
    from hpo.study import load_study

    optuna_logging.enable_default_handler()  # another test may have taken it off
    handler = optuna_logging._default_handler
    assert handler is not None
    saved = (handler.stream, list(handler.filters))
    try:
        _terminal(monkeypatch)
        config = HPOConfig(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="s")
        with progress.bar(total=1, desc="trials"):
            load_study(config)  # Optuna logs that it created the study
        assert isinstance(handler.stream, progress.AboveBars)
        assert any(isinstance(f, SecretMaskingFilter) for f in handler.filters)
        assert optuna.logging.get_verbosity() <= logging.INFO
    finally:
        handler.setStream(saved[0])
        handler.filters = saved[1]
