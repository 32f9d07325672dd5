"""Progress of long jobs (training, prompt-bank builds, evaluation, dataset preparation): a tqdm bar with rate and
ETA on a terminal, plain log lines where the output is not a terminal (CI logs, ``> file``, ``nohup``), where a
bar's carriage returns would pile up into one unreadable line.

    with progress(len(items), "prompt bank", unit="img") as bar:
        for item in items:
            ...
            bar.update()

A line looks like ``prompt bank: 120/600 img (20%), 3.2 img/s, ETA 2:30`` and is printed at most every
``interval`` seconds (default 30; ``DPSEG_PROGRESS_INTERVAL`` overrides it), plus one final line with the total
time. ``DPSEG_PROGRESS=bar|lines|off`` forces a style (e.g. ``lines`` for a terminal recorded with ``script``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Optional, TextIO

STYLES = ("bar", "lines", "off")


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _style(stream: TextIO, enabled: bool, lines: bool) -> str:
    forced = os.environ.get("DPSEG_PROGRESS", "").strip().lower()
    if not enabled or forced == "off":
        return "off"
    if forced in ("bar", "lines"):
        style = forced
    else:
        style = "bar" if getattr(stream, "isatty", lambda: False)() else "lines"
    return "off" if style == "lines" and not lines else style


class Progress:
    """One job's progress: ``update(n)``, ``set_postfix(text)``, ``write(line)``, ``close()`` (or ``with``)."""

    def __init__(
        self,
        total: Optional[int],
        desc: str,
        unit: str = "it",
        *,
        enabled: bool = True,
        initial: int = 0,
        stream: Optional[TextIO] = None,
        interval: Optional[float] = None,
        lines: bool = True,
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.style = _style(self.stream, enabled, lines)
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start_n = initial
        self.interval = float(os.environ.get("DPSEG_PROGRESS_INTERVAL", 30.0)) if interval is None else interval
        self.postfix = ""
        self._t0 = self._last = time.perf_counter()
        self._bar = None
        self._closed = False
        if self.style == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=self.stream, smoothing=0.1
            )

    @property
    def is_bar(self) -> bool:
        """Whether a live bar is shown (callers that print their own log lines skip them then)."""
        return self._bar is not None

    def line(self) -> str:
        """The plain progress line of now: count, share, rate and ETA."""
        elapsed = time.perf_counter() - self._t0
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s" if rate >= 0.1 or not done else f"{1 / rate:.3g} s/{self.unit}")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        elif self.total and self.n >= self.total:
            parts.append(f"done in {_clock(elapsed)}")
        return f"{self.desc}: " + ", ".join(parts) + (f" [{self.postfix}]" if self.postfix else "")

    def _emit(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.style == "lines":
            now = time.perf_counter()
            if now - self._last >= self.interval and not (self.total and self.n >= self.total):
                self._last = now
                self._emit(self.line())

    def set_postfix(self, text: str) -> None:
        """A short note after the counts (the current class, the loss)."""
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def write(self, text: str, file: Optional[TextIO] = None) -> None:
        """Print a message (to stdout unless told) without breaking the bar."""
        file = file if file is not None else sys.stdout
        if self._bar is not None:
            self._bar.write(text, file=file)
        else:
            print(text, file=file, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.style == "lines" and self.n > self.start_n:
            self._emit(self.line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: Optional[int], desc: str, unit: str = "it", **kwargs) -> Progress:
    """A :class:`Progress` (see the module doc); ``enabled=False`` shows nothing, ``lines=False`` shows a bar on a
    terminal and nothing elsewhere (for callers that log their own lines)."""
    return Progress(total, desc, unit, **kwargs)
