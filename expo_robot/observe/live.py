"""What an operator sees while a long command runs: a live status panel and progress bars (rich).

On a terminal they redraw in place; anywhere else (CI, pipes, log files) or when turned off they fall back to one
plain log line every `every_s` seconds, so logs stay readable. `enabled` is the config's `live` value:
"auto" (panel only on an interactive terminal), "on" (always the panel) or "off" (always plain lines); YAML turns
on/off into booleans, which are accepted too.

    with LiveStatus(cfg.live, title="finetune") as status:
        while running:
            status.update(rate_hz=49.9, step_ms=1.8, episode=12, success_rate=0.42, buffer=15_000)

    with ProgressBar(total=steps, description="pretraining", enabled=cfg.live) as bar:
        for _ in range(steps):
            bar.advance(loss=loss)
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

log = logging.getLogger("expo_robot.status")
T = TypeVar("T")

# Known fields: name -> (label, format). Unknown fields are shown under their own name.
FIELDS: dict[str, tuple[str, str]] = {
    "state": ("state", "{}"),
    "rate_hz": ("control rate", "{:.1f} Hz"),
    "overruns": ("overruns", "{}"),
    "overrun_pct": ("overruns", "{:.2f}%"),
    "step_ms": ("step latency", "{:.2f} ms"),
    "step_p99_ms": ("step latency p99", "{:.2f} ms"),
    "env_steps": ("env steps", "{:,}"),
    "episode": ("episode", "{}"),
    "success_rate": ("success so far", "{:.0%}"),
    "successes": ("successes", "{}"),
    "interventions": ("interventions", "{}"),
    "updates": ("learner updates", "{:,}"),
    "updates_per_s": ("learner updates/s", "{:.1f}"),
    "critic_loss": ("critic loss", "{:.4g}"),
    "actor_loss": ("actor loss", "{:.4g}"),
    "buffer": ("buffer", "{:,} transitions"),
    "weights": ("weights version", "{}"),
    "safety_events": ("safety events", "{}"),
}


class LiveConfigError(ValueError):
    """`live` has a value that is not auto/on/off."""


def _mode(enabled: str | bool) -> str:
    value = ("on" if enabled else "off") if isinstance(enabled, bool) else str(enabled).lower()
    value = {"true": "on", "false": "off"}.get(value, value)
    if value not in ("auto", "on", "off"):
        raise LiveConfigError(f"live must be auto, on or off (got '{enabled}')")
    return value


def use_panel(enabled: str | bool, stream: IO[str]) -> bool:
    """True: draw in place; False: plain log lines. "auto" asks the stream itself whether it is an interactive
    terminal (not rich, which also says yes when FORCE_COLOR is set, as some CI systems do)."""
    mode = _mode(enabled)
    if mode != "auto":
        return mode == "on"
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") not in ("dumb", "unknown")


def _console(enabled: str | bool, stream: IO[str]) -> Console:
    return Console(file=stream, force_terminal=True if _mode(enabled) == "on" else None)


def format_field(name: str, value: Any) -> tuple[str, str]:
    label, fmt = FIELDS.get(name, (name.replace("_", " "), "{:.4g}" if isinstance(value, float) else "{}"))
    if value is None:
        return label, "–"
    try:
        return label, fmt.format(value)
    except (ValueError, TypeError):  # e.g. a string where a number was expected: show it as it is
        return label, str(value)


def status_line(fields: dict[str, Any]) -> str:
    return " | ".join(f"{label} {text}" for label, text in (format_field(k, v) for k, v in fields.items()))


@contextlib.contextmanager
def _logs_above_panel() -> Iterator[None]:
    """While a panel is drawn, route terminal log handlers through rich's stderr proxy so lines print above it."""
    originals = (sys.__stderr__, sys.__stdout__)
    moved = []
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and handler.stream in originals:
            moved.append((handler, handler.stream))
            handler.setStream(sys.stderr)  # rich's Live has replaced sys.stderr with its proxy by now
    try:
        yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)


class LiveStatus:
    """A panel of named fields redrawn ~4 times a second, or a plain status log line every `every_s` seconds."""

    def __init__(
        self,
        enabled: str | bool = "auto",
        *,
        title: str = "expo-robot",
        every_s: float = 10.0,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.title = title
        self.every_s = every_s
        stream = stream or sys.stderr
        self.panel = use_panel(enabled, stream)
        self._console = _console(enabled, stream)
        self._clock = clock
        self._fields: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._logs: contextlib.ExitStack | None = None
        self._started, self._last_line = clock(), -math.inf

    def update(self, **fields: Any) -> None:
        """Set fields (thread-safe). In plain mode, logs a line at the first update (an operator sees at once what
        runs), then when `every_s` has passed since the last one."""
        with self._lock:
            self._fields.update(fields)
            due = self._clock() - self._last_line >= self.every_s
            if due:
                self._last_line = self._clock()
            line = status_line(self._fields) if due else None
        if line is not None:
            log.log(logging.DEBUG if self.panel else logging.INFO, "%s: %s", self.title, line)

    def fields(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._fields)

    def render(self) -> Panel:
        table = Table.grid(padding=(0, 2))
        for _ in range(2):
            table.add_column(style="dim", justify="right")
            table.add_column(style="bold")
        cells = [format_field(k, v) for k, v in self.fields().items()]
        for i in range(0, len(cells), 2):
            row = [c for pair in cells[i : i + 2] for c in pair]
            table.add_row(*row, *([""] * (4 - len(row))))
        elapsed = time.strftime("%H:%M:%S", time.gmtime(self._clock() - self._started))
        events = self.fields().get("safety_events") or 0
        style = "red" if events else "green"
        return Panel(table, title=f"[bold]{self.title}[/] · {elapsed}", border_style=style, expand=False)

    def start(self) -> LiveStatus:
        self._started, self._last_line = self._clock(), -math.inf
        if self.panel:
            self._live = Live(console=self._console, get_renderable=self.render, refresh_per_second=4)
            self._live.start()
            self._logs = contextlib.ExitStack()
            self._logs.enter_context(_logs_above_panel())
        return self

    def stop(self) -> None:
        if self._logs is not None:
            self._logs.close()
            self._logs = None
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._fields:
            log.info("%s (final): %s", self.title, status_line(self.fields()))

    def __enter__(self) -> LiveStatus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProgressBar:
    """A rich progress bar on a terminal; elsewhere a log line 'what: n/total (x%), rate, eta' every `every_s` s."""

    def __init__(
        self,
        total: int | None,
        description: str,
        enabled: str | bool = "auto",
        *,
        every_s: float = 10.0,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.description, self.every_s = total, description, every_s
        self.done = 0
        self._clock = clock
        stream = stream or sys.stderr
        self.panel = use_panel(enabled, stream)
        self._console = _console(enabled, stream)
        self._postfix: dict[str, Any] = {}
        self._progress: Progress | None = None
        self._logs: contextlib.ExitStack | None = None
        self._task = None
        self._started = self._last_line = clock()

    def advance(self, n: int = 1, **fields: Any) -> None:
        """Count n more items done; `fields` (e.g. loss=0.12) are shown after the bar or in the log line."""
        self.done += n
        self._postfix.update(fields)
        if self._progress is not None:
            self._progress.update(self._task, advance=n, postfix=status_line(self._postfix))
        elif self._clock() - self._last_line >= self.every_s:
            self._last_line = self._clock()
            log.info("%s", self.line())

    def line(self) -> str:
        elapsed = max(self._clock() - self._started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.description}: {self.done:,}"
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            text += f"/{self.total:,} ({self.done / self.total:.0%}), {rate:.1f}/s, eta {eta:.0f} s"
        else:
            text += f", {rate:.1f}/s"
        return text + (f", {status_line(self._postfix)}" if self._postfix else "")

    def start(self) -> ProgressBar:
        self._started = self._last_line = self._clock()
        if self.panel:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[postfix]}"),
                console=self._console,
            )  # fmt: skip
            self._task = self._progress.add_task(self.description, total=self.total, postfix="")
            self._progress.start()
            self._logs = contextlib.ExitStack()
            self._logs.enter_context(_logs_above_panel())
        return self

    def stop(self) -> None:
        if self._logs is not None:
            self._logs.close()
            self._logs = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elapsed = self._clock() - self._started
        log.log(logging.DEBUG if self.panel else logging.INFO, "%s (done in %.1f s)", self.line(), elapsed)

    def __enter__(self) -> ProgressBar:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def track[T](
    items: Iterable[T],
    description: str,
    total: int | None = None,
    enabled: str | bool = "auto",
    every_s: float = 10.0,
) -> Iterator[T]:
    """Iterate with a ProgressBar (total defaults to len(items) when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with ProgressBar(total, description, enabled, every_s=every_s) as bar:
        for item in items:
            yield item
            bar.advance()


def render_text(status: LiveStatus, width: int = 100) -> str:
    """The panel as plain text (for tests and for dumping the last state into a log)."""
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(status.render())
    return console.export_text()
