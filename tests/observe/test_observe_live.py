"""Live panel and progress bars: plain log lines off a terminal or when off, a redrawn panel when on."""

import io
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from expo_robot.observe.live import (
    LiveConfigError,
    LiveStatus,
    ProgressBar,
    format_field,
    render_text,
    status_line,
    track,
    use_panel,
)

FIELDS = {"rate_hz": 49.94, "overruns": 0, "step_ms": 1.834, "episode": 12, "success_rate": 0.4, "buffer": 15000,
          "safety_events": 2}  # fmt: skip


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _status_lines(caplog, level=logging.INFO):
    return [r.getMessage() for r in caplog.records if r.name == "expo_robot.status" and r.levelno == level]


def test_auto_off_a_terminal_logs_a_plain_line_every_period(caplog):
    caplog.set_level(logging.INFO)
    clock, stream = Clock(), io.StringIO()
    with LiveStatus("auto", title="finetune", every_s=10.0, stream=stream, clock=clock) as status:
        assert not status.panel
        for t in (0.0, 5.0, 10.0, 12.0, 21.0):
            clock.t = t
            status.update(**{**FIELDS, "episode": int(t)})
    lines = _status_lines(caplog)
    assert len(lines) == 4  # at once (t=0), at t=10 and t=21, plus the final line on exit
    assert lines[0].startswith("finetune: control rate 49.9 Hz") and "episode 0" in lines[0]
    assert lines[1].startswith(
        "finetune: control rate 49.9 Hz | overruns 0 | step latency 1.83 ms | episode 10"
    )
    assert "success so far 40% | buffer 15,000 transitions | safety events 2" in lines[1]
    assert lines[3].startswith("finetune (final):") and "episode 21" in lines[3]
    assert not any("\x1b" in line for line in lines)
    assert stream.getvalue() == ""  # nothing drawn


@pytest.mark.parametrize("off", ["off", False, "false"])
def test_off_on_a_terminal_still_logs_plain_lines(caplog, monkeypatch, off):
    monkeypatch.setenv("TERM", "xterm-256color")
    caplog.set_level(logging.INFO)
    clock, stream = Clock(), FakeTTY()
    with LiveStatus(off, every_s=1.0, stream=stream, clock=clock) as status:
        clock.t = 2.0
        status.update(rate_hz=50.0)
    assert not status.panel and stream.getvalue() == ""
    assert _status_lines(caplog)[0] == "expo-robot: control rate 50.0 Hz"


def test_auto_on_a_terminal_and_on_anywhere_draw_the_panel(monkeypatch, caplog):
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("FORCE_COLOR", "1")  # some CI systems set it; it must not turn a pipe into a panel
    assert use_panel("auto", FakeTTY())
    assert not use_panel("auto", io.StringIO())
    assert use_panel(True, io.StringIO()) and use_panel("on", io.StringIO())
    monkeypatch.setenv("TERM", "dumb")
    assert not use_panel("auto", FakeTTY())
    monkeypatch.setenv("TERM", "xterm-256color")
    caplog.set_level(logging.DEBUG)
    stream = io.StringIO()
    with LiveStatus("on", title="eval", stream=stream, every_s=0.0) as status:
        assert status.panel
        status.update(**FIELDS)
    drawn = stream.getvalue()
    assert "eval" in drawn and "control rate" in drawn and "49.9 Hz" in drawn and "╭" in drawn
    assert _status_lines(caplog, logging.INFO)[0].startswith("eval (final):")  # log file keeps the last state
    assert _status_lines(caplog, logging.DEBUG)  # periodic lines go to DEBUG while the panel shows them


def test_bad_live_value_is_a_clear_error():
    with pytest.raises(LiveConfigError, match="auto, on or off"):
        LiveStatus("sometimes")


def test_field_formatting():
    assert format_field("buffer", 1234567) == ("buffer", "1,234,567 transitions")
    assert format_field("my_metric", 0.123456) == ("my metric", "0.1235")
    assert format_field("rate_hz", "n/a") == ("control rate", "n/a")  # wrong type shown as is, never raises
    assert format_field("rate_hz", None) == ("control rate", "–")
    assert status_line({"episode": 3, "success_rate": 0.25}) == "episode 3 | success so far 25%"


def test_progress_bar_plain_lines_with_rate_and_eta(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    with ProgressBar(100, "pretraining", "auto", every_s=5.0, stream=io.StringIO(), clock=clock) as bar:
        for i in range(100):
            clock.t = (i + 1) * 0.1  # 10 items per second
            bar.advance(loss=1.0 / (i + 1))
    lines = _status_lines(caplog)
    assert lines[0] == "pretraining: 50/100 (50%), 10.0/s, eta 5 s, loss 0.02"
    assert lines[-1].startswith("pretraining: 100/100 (100%)") and lines[-1].endswith("(done in 10.0 s)")
    assert len(lines) == 3


def test_progress_bar_panel_and_track(caplog):
    stream = io.StringIO()
    with ProgressBar(20, "writing dataset", "on", stream=stream) as bar:
        for _ in range(20):
            bar.advance()
    assert "writing dataset" in stream.getvalue() and "20/20" in stream.getvalue()
    caplog.set_level(logging.INFO)
    assert list(track(range(5), "benchmark", enabled="off")) == [0, 1, 2, 3, 4]
    assert _status_lines(caplog)[-1].startswith("benchmark: 5/5 (100%)")


@pytest.mark.timeout(60)
def test_piped_output_has_no_terminal_codes():
    """A real pipe (as in CI): the status and progress lines arrive as plain log lines between other logs."""
    script = textwrap.dedent("""
        import logging
        from expo_robot.config import setup_logging
        from expo_robot.observe.live import LiveStatus, ProgressBar
        setup_logging(None)
        with LiveStatus("auto", title="finetune", every_s=0.0) as status:
            for i in range(3):
                status.update(rate_hz=50.0, episode=i)
                logging.getLogger("actor").info("episode %d ended", i)
        with ProgressBar(4, "pretraining", "auto", every_s=0.0) as bar:
            for _ in range(4):
                bar.advance()
    """)
    env = {**os.environ, "FORCE_COLOR": "1", "TERM": "xterm-256color"}  # as some CI runners set them
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stderr and "\r" not in out.stderr and out.stdout == ""
    lines = out.stderr.splitlines()
    assert any(line.endswith("finetune: control rate 50.0 Hz | episode 1") for line in lines)
    assert any(line.endswith("actor: episode 2 ended") for line in lines)
    assert any("pretraining: 4/4 (100%)" in line for line in lines)
    assert all(" INFO " in line for line in lines)  # every line is a whole log record


def test_panel_layout_as_text():
    status = LiveStatus("off", title="finetune")
    status.update(**FIELDS, my_counter=7)
    text = render_text(status, width=100)
    assert text.splitlines()[0].startswith("╭") and "finetune · 00:00:" in text
    assert (
        "control rate  49.9 Hz" in text and "buffer  15,000 transitions" in text and "my counter  7" in text
    )
