"""The progress renderer: plain periodic lines off a terminal, a rich bar on one."""
from __future__ import annotations

import io

from rich.console import Console

from provenance.commands.progress import PlainLines, RichBars, done_line, format_seconds, plain_line
from provenance.progress import Meter, ProgressUpdate


def test_plain_line_format() -> None:
    update = ProgressUpdate("quantize", 2_700_000_000, 6_600_000_000)
    assert plain_line(update, 15.0) == "quantize 41% 2.7/6.6 GB 180.0 MB/s ETA 22s"
    assert plain_line(ProgressUpdate("scan", 3, 10, unit="files"), 1.5) == "scan 30% 3/10 files 2 files/s ETA 4s"
    assert plain_line(ProgressUpdate("read", 5_000, None), 0.0) == "read 5.0 kB"
    assert done_line(ProgressUpdate("quantize", 6_600_000_000, 6_600_000_000), 37.0) == \
        "quantize done 6.6 GB in 37s (178.4 MB/s)"
    assert [format_seconds(s) for s in (0.4, 59, 61, 3725)] == ["0s", "59s", "1m01s", "1h02m"]


def test_plain_lines_are_periodic_and_end_with_a_summary() -> None:
    out = io.StringIO()
    lines = PlainLines(Console(file=out, width=200), interval=3600.0)
    meter = Meter(lines, "quantize", 100)
    for _ in range(10):
        meter.advance(10)
    lines.close()
    assert out.getvalue() == ""  # finished before the first line was due: nothing to say
    out = io.StringIO()
    lines = PlainLines(Console(file=out, width=200), interval=0.0)
    meter = Meter(lines, "quantize", 100)
    meter.advance(50, "blk.0.\x1b[31mevil")
    meter.advance(50)
    lines.close()
    text = out.getvalue().splitlines()
    assert text[0].startswith("provenance: quantize 50% 50/100 B") and "\x1b" not in out.getvalue()
    assert text[-1].startswith("provenance: quantize done 100 B in ")


def test_rich_bar_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True)
    bars = RichBars(console)
    with bars.progress:
        meter = Meter(bars, "quantize", 2_000_000)
        meter.advance(1_000_000, "blk.0.ffn_up.weight")
    assert "quantize" in out.getvalue() and "1.0/2.0 MB" in out.getvalue()


def test_a_phase_without_updates_still_gets_a_line_per_interval() -> None:
    """The heartbeat: silence for an interval prints the task last heard from and how long
    ago; nothing before any task reported, nothing while lines come anyway."""
    out = io.StringIO()
    lines = PlainLines(Console(file=out, width=200), interval=10.0)
    lines.tick(now=lines.said + 60)
    assert out.getvalue() == ""  # nothing heard yet
    meter = Meter(lines, "lineage vs base.gguf", 1000)
    meter.advance(1000, "output.weight")
    heard = lines.heard["lineage vs base.gguf"]
    lines.tick(now=lines.said + 5)
    assert out.getvalue() == ""  # within the interval
    lines.tick(now=heard + 12)
    text = out.getvalue().splitlines()
    assert len(text) == 1 and text[0].startswith("provenance: lineage vs base.gguf 100% 1.0/1.0 kB")
    assert text[0].endswith("last step 12s ago")
    lines.tick(now=heard + 15)
    assert len(out.getvalue().splitlines()) == 1  # the next one is an interval after the last line


def test_the_heartbeat_runs_off_a_terminal(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """progress_display's heartbeat thread prints while the caller is busy and stops with it."""
    import time

    from provenance.commands import progress as progress_module

    monkeypatch.setenv(progress_module.INTERVAL_ENV, "0")
    monkeypatch.setattr(progress_module, "MIN_HEARTBEAT_S", 0.05)
    out = io.StringIO()
    console = Console(file=out, width=200)
    with progress_module.progress_display(console) as progress:
        Meter(progress, "known mark", 10).advance(10)
        first = len(out.getvalue().splitlines())
        time.sleep(0.5)  # busy without updates
        beats = [line for line in out.getvalue().splitlines() if line.endswith("ago")]
    assert first == 1 and beats
    after = out.getvalue()
    time.sleep(0.2)
    assert out.getvalue() == after  # stopped with the display
