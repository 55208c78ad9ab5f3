"""The terminal: cruijff's own lines and tables, a live view of long work, and the libraries' output
kept in the run's logs.

On a terminal, training shows one live line (stage, epoch, step/total, loss, steps/s, ETA) and each
eval cell a line when it ends. Where stdout is not a terminal (a pipe, a file, CI, an sbatch job),
the same events are plain lines, one per event, with no control codes. torchtune's and inspect's own
output, and the warnings of the libraries under them, go to the run's ``logs/`` (``verbose=true``
prints them as well).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

# While library output is captured, the stream that still reaches the user's terminal.
_terminal: TextIO | None = None


def terminal() -> TextIO:
    """Where cruijff's own output goes: stdout, also while the libraries' output is captured."""
    return _terminal or sys.stdout


def is_live() -> bool:
    """A terminal that can redraw a live view (not a pipe, a file or a dumb terminal)."""
    try:
        return terminal().isatty() and os.environ.get("TERM") != "dumb"
    except ValueError:  # a closed stream
        return False


def console():
    """A rich console on the terminal; full-width tables when the output goes to a file or a pipe (logs, CI)."""
    from rich.console import Console

    return Console(file=terminal(), width=None if is_live() else 200)


def say(text: str) -> None:
    """One line of cruijff's own on the terminal."""
    print(text, file=terminal(), flush=True)


@contextmanager
def library_output(log: Path, verbose: bool = False) -> Iterator[None]:
    """Send everything written to stdout and stderr — by Python, C extensions or child processes —
    to ``log`` (appended), while :func:`say`, :func:`console` and the live views keep the terminal.
    ``verbose``: the output reaches the terminal as well as it always did (and not the log)."""
    global _terminal
    if verbose or _terminal is not None:  # verbose, or already captured (a stage inside a stage)
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as sink:
        _terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            _terminal.close()
            _terminal = None


class TrainingView:
    """One run's fine-tuning as it happens. Live: a line with the stage, epoch, step/total, loss,
    steps/s and ETA, redrawn in place. Plain: a line when training starts and one per epoch."""

    def __init__(self, run: str, what: str = "fine-tuning"):
        self.run, self.what = run, what
        self.epochs = self.steps_per_epoch = 0
        self._progress = self._task = None
        self._epoch, self._epoch_rows, self._epoch_t0 = -1, [], time.time()

    def __enter__(self) -> "TrainingView":
        return self

    def start(self, epochs: int, steps_per_epoch: int, epochs_run: int = 0, device: str = "") -> None:
        """Training begins (after setup): ``epochs_run`` epochs are already done (a resume)."""
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self._epoch, self._epoch_t0 = epochs_run, time.time()
        where = f" on {device}" if device else ""
        if not is_live():
            say(f"cruijff: {self.run}: {self.what}, {epochs} epochs x {steps_per_epoch} steps{where}"
                + (f", from epoch {epochs_run + 1}" if epochs_run else ""))
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]} · step {task.fields[step]}/{task.fields[steps]}"),
            TextColumn("· loss {task.fields[loss]}"), TextColumn("· {task.fields[rate]} steps/s ·"),
            TimeRemainingColumn(), console=console(), redirect_stdout=False, redirect_stderr=False, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(f"{self.run} {self.what}", total=epochs * steps_per_epoch,
                                             completed=epochs_run * steps_per_epoch, epoch=epochs_run + 1,
                                             epochs=epochs, step=0, steps=steps_per_epoch, loss="—", rate="—")

    def step(self, row: dict) -> None:
        """One logged step: ``{"epoch", "step", "loss", ...}`` (``step`` counts from the run's start)."""
        if row["epoch"] != self._epoch:
            self._end_epoch()
            self._epoch, self._epoch_t0 = row["epoch"], time.time()
        self._epoch_rows.append(row)
        if self._progress is not None:
            done = len(self._epoch_rows)
            elapsed = max(time.time() - self._epoch_t0, 1e-9)
            self._progress.update(self._task, completed=row["epoch"] * self.steps_per_epoch + done,
                                  epoch=row["epoch"] + 1, step=done, loss=f"{row['loss']:.4f}",
                                  rate=f"{done / elapsed:.1f}")
        if self.steps_per_epoch and len(self._epoch_rows) >= self.steps_per_epoch:
            self._end_epoch()

    def _end_epoch(self) -> None:
        rows, self._epoch_rows = self._epoch_rows, []
        if not rows:
            return
        seconds = max(time.time() - self._epoch_t0, 1e-9)
        mean = sum(r["loss"] for r in rows) / len(rows)
        text = (f"cruijff: {self.run}: epoch {rows[-1]['epoch'] + 1}/{self.epochs}: loss {rows[-1]['loss']:.4f} "
                f"(mean {mean:.4f}), {len(rows)} steps in {seconds:.1f} s, {len(rows) / seconds:.1f} steps/s")
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)
        else:
            say(text)
        self._epoch_t0 = time.time()

    def __exit__(self, *exc) -> None:
        self._end_epoch()
        if self._progress is not None:
            self._progress.stop()


@contextmanager
def status(text: str) -> Iterator[None]:
    """A spinner with ``text`` on a terminal while the work runs (nothing where output is plain)."""
    if not is_live():
        yield
        return
    from rich.live import Live
    from rich.spinner import Spinner

    # not console().status(): that would also show the libraries' output, which goes to the log
    with Live(Spinner("dots", text), console=console(), transient=True, redirect_stdout=False, redirect_stderr=False):
        yield
