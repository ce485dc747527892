"""Progress of a running study: the event the study loop emits, and a small renderer.

The renderer draws one updating line on a terminal (trial n/N, best so far, elapsed, ETA)
and, when stderr is not a TTY (CI logs, pipes), prints one plain line per finished trial
instead of control characters.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class ProgressUpdate:
    """Where a study stands; emitted at start, after the baseline and after each trial."""

    study_name: str
    #: "start" | "baseline" | "trial" | "recovered" (a trial whose process or host was
    #: lost, failed here; its config runs again) | "confirm" | "end"
    event: str
    n_done: int  # trials counted toward the target (this run and earlier runs)
    n_target: int | None
    n_running: int
    elapsed_s: float
    timeout_s: float | None
    objective: str
    unit: str  # e.g. "tokens/s" or "val_loss"
    best_value: float | None
    best_trial: int | None
    baseline_value: float | None = None
    trial_number: int | None = None  # the trial this event is about
    trial_status: str | None = None
    trial_value: float | None = None
    trial_reason: str | None = None
    n_done_at_start: int = 0  # trials already done when this run started (resume)

    @property
    def eta_s(self) -> float | None:
        """Seconds left, from this run's pace; bounded by the timeout when one is set."""
        left_by_timeout = None if self.timeout_s is None else max(0.0, self.timeout_s - self.elapsed_s)
        finished_here = self.n_done - self.n_done_at_start
        left_by_trials = None
        if self.n_target is not None and finished_here > 0:
            per_trial = self.elapsed_s / finished_here
            left_by_trials = max(0, self.n_target - self.n_done) * per_trial
        known = [v for v in (left_by_timeout, left_by_trials) if v is not None]
        return min(known) if known else None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit.endswith("/s"):
        return f"{value:,.0f} {unit}"
    return f"{value:.4g}"


class ProgressBar:
    """Callable progress renderer for `run_study(progress=...)`."""

    def __init__(self, stream: TextIO | None = None, *, width: int = 24, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = self.stream.isatty() if tty is None else tty
        self._drawn = False

    def __call__(self, update: ProgressUpdate) -> None:
        if self.tty and update.event != "confirm":  # confirmation runs after "end": plain lines
            self._draw_line(update)
        else:
            self._print_event(update)

    def _counter(self, u: ProgressUpdate) -> str:
        return f"{u.n_done}/{u.n_target}" if u.n_target is not None else f"{u.n_done}"

    def _bar(self, u: ProgressUpdate) -> str:
        if u.n_target:
            share = min(1.0, u.n_done / u.n_target)
        elif u.timeout_s:
            share = min(1.0, u.elapsed_s / u.timeout_s)
        else:
            share = 0.0
        filled = round(share * self.width)
        return "[" + "#" * filled + "-" * (self.width - filled) + "]"

    def _summary(self, u: ProgressUpdate) -> str:
        best = format_value(u.best_value, u.unit)
        where = f" (#{u.best_trial})" if u.best_trial is not None else ""
        return (
            f"trial {self._counter(u)}  best {best}{where}  "
            f"elapsed {format_duration(u.elapsed_s)}  ETA {format_duration(u.eta_s)}"
        )

    def _draw_line(self, u: ProgressUpdate) -> None:
        line = f"{u.study_name} {self._bar(u)} {self._summary(u)}"
        if u.n_running:
            line += f"  running {u.n_running}"
        columns = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r\x1b[2K" + line[: columns - 1])
        if u.event == "end":
            self.stream.write("\n")
        self.stream.flush()
        self._drawn = u.event != "end"

    def _print_event(self, u: ProgressUpdate) -> None:
        if u.event == "start":
            target = f"{u.n_target} trials" if u.n_target is not None else "no trial limit"
            extra = f", {u.n_done} already done" if u.n_done else ""
            timeout = f", timeout {format_duration(u.timeout_s)}" if u.timeout_s else ""
            self.stream.write(f"{u.study_name}: {target}{extra}{timeout}\n")
        elif u.event == "baseline":
            self.stream.write(
                f"{u.study_name}: baseline (default config) {format_value(u.baseline_value, u.unit)}"
                + (f" — {u.trial_reason}" if u.trial_reason else "")
                + "\n"
            )
        elif u.event == "trial":
            what = u.trial_status or "?"
            if u.trial_value is not None:
                what += f" {format_value(u.trial_value, u.unit)}"
            if u.trial_reason:
                what += f" ({u.trial_reason})"
            self.stream.write(f"trial #{u.trial_number}: {what} | {self._summary(u)}\n")
        elif u.event == "recovered":
            self.stream.write(f"trial #{u.trial_number}: failed ({u.trial_reason}) | {self._summary(u)}\n")
        elif u.event == "confirm":
            self.stream.write(f"{u.study_name}: confirming: {u.trial_reason or ''}\n")
        elif u.event == "end":
            self.stream.write(f"{u.study_name}: finished | {self._summary(u)}\n")
        self.stream.flush()
