"""Step-by-step progress on stderr: a line per step with its duration, and a live timer on terminals."""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Iterator


class Progress:
    def __init__(self, enabled: bool = True, stream=None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.live = enabled and self.stream.isatty()

    def note(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        start = time.perf_counter()
        stop = threading.Event()
        ticker = None
        if self.live:
            def tick() -> None:
                while not stop.wait(0.5):
                    self.stream.write(f"\r  … {label} ({time.perf_counter() - start:.0f} s)")
                    self.stream.flush()
            ticker = threading.Thread(target=tick, daemon=True)
            ticker.start()
        else:
            self.note(f"  … {label}")
        ok = False
        try:
            yield
            ok = True
        finally:
            stop.set()
            if ticker:
                ticker.join()
                self.stream.write("\r\033[K")
            mark = "✓" if ok else "✗"
            self.note(f"  {mark} {label} ({time.perf_counter() - start:.1f} s)")

    def bar(self, label: str):
        """A callback (done, total) drawing a progress bar on terminals."""
        def update(done: int, total: int) -> None:
            if not self.live:
                return
            width = 30
            filled = int(width * done / total)
            self.stream.write(f"\r  {label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
            if done == total:
                self.stream.write("\n")
            self.stream.flush()
        return update
