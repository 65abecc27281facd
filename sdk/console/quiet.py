"""Quiet output: the toolchains' own log lines hidden unless the user asks for them (`--verbose`).

    with quiet_native_logs(verbose=False):
        session = device_runtime.load("model.pte")   # no "[cpuinfo_utils.cpp:71] Reading file ..." lines

Two kinds of noise reach the terminal when a `.pte` is exported or loaded:
- ExecuTorch's runtime log lines: `[cpuinfo_utils.cpp:71] Reading file ...`, `[threadpool.cpp:66] Resetting
  threadpool to 1 threads.` (its Python binding prints them to stderr) and, from code that logs through the
  C++ platform layer, `I 00:00:00.001234 executorch:program.cpp:130] ...` (its error lines, `E ...`, stay).
  Native code writes to file descriptor 2 (or 1) itself, where `sys.stderr` redirection cannot reach, so each
  descriptor is redirected through a pipe (a pseudo-terminal when it was a terminal, so `isatty()` and live
  progress lines behave as before); a reader thread drops the lines that match those patterns and passes
  every other byte through unchanged. The descriptors are restored on exit, also on an exception; when the
  block fails with one, the lines it hid are written out then (the last `REPLAY_LINES`), since they may say
  why: "[program.cpp:114] File size is too small" is ExecuTorch's only account of a truncated `.pte`.
- torch's pytree deprecation notices, from libraries registering pytree nodes the old way: warnings
  (filtered here) and one logging record of `torch.utils._pytree` (its logger is raised to ERROR).

POSIX only (the reader waits on the pipe with `select`); elsewhere the native lines are left alone.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import select
import sys
import threading
import warnings
from typing import Iterator

# Whole lines (from their start) that are a native runtime's log, not the user's output. ExecuTorch's platform
# layer writes a level letter first: its errors (E, F) stay visible, they carry what the exception leaves out.
NATIVE_LOG_LINE = re.compile(
    rb"\[[\w.+-]+\.(?:c|cc|cpp|cxx|h|hpp|mm):\d+\] "                       # [cpuinfo_utils.cpp:71] ...
    rb"|[DIW] \d\d:\d\d:\d\d\.\d{6} executorch:[\w.+-]+:\d+\] ")           # I 00:00:00.001234 executorch:x.cpp:9]
PYTREE_WARNINGS = r"(?s).*(pytree|`to_str_fn` and `maybe_from_str_fn` is deprecated)"
PYTREE_LOGGER = "torch.utils._pytree"
REPLAY_LINES = 50
_DECIDE_WITHIN_S = 0.05  # a line start held this long without its end is judged on what has arrived
_LONGEST_PREFIX = 160    # bytes enough for NATIVE_LOG_LINE to decide


@contextlib.contextmanager
def quiet_native_logs(verbose: bool = False, fds: tuple[int, ...] = (1, 2)) -> Iterator[None]:
    """Hide native runtime log lines written to `fds` and torch's pytree deprecation notices, unless `verbose`.

    Every other line (and partial line, such as a progress bar's `\\r` updates) passes through unchanged.
    """
    if verbose:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PYTREE_WARNINGS)
        logger = logging.getLogger(PYTREE_LOGGER)
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            with _filtered_fds(fds):
                yield
        finally:
            logger.setLevel(level)


@contextlib.contextmanager
def _filtered_fds(fds: tuple[int, ...]) -> Iterator[None]:
    if os.name != "posix":
        yield
        return
    _flush_all()
    filters = []
    failed = False
    try:
        for fd in fds:
            try:
                filters.append(_FdFilter(fd))
            except OSError:  # a closed or unusable descriptor: leave it as it is
                continue
        yield
    except Exception:
        failed = True
        raise
    finally:
        _flush_all()
        for f in filters:
            f.restore()
        for f in filters:
            f.finish(replay=failed)


def _flush_all() -> None:
    """Flush Python's and C's buffered output, so it goes where the descriptor points right now."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):
        pass


class _FdFilter:
    """One descriptor redirected into a pipe (or pty) and copied back to the original, less native log lines."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved = os.dup(fd)  # where the output really goes
        try:
            if os.isatty(fd):
                self.read_end, write_end = _raw_pty(fd)
            else:
                self.read_end, write_end = os.pipe()
        except OSError:
            os.close(self.saved)
            raise
        os.dup2(write_end, fd)
        os.close(write_end)
        self.state = _LineState(self._write)
        self.thread = threading.Thread(target=self._copy, name=f"quiet-fd{fd}", daemon=True)
        self.thread.start()

    def restore(self) -> None:
        """Point the descriptor back at the original; the reader sees end-of-file once no writer is left."""
        os.dup2(self.saved, self.fd)

    def finish(self, replay: bool = False, timeout: float = 2.0) -> None:
        # A child process that inherited the pipe and outlives this block keeps it open: stop waiting then.
        self.thread.join(timeout)
        if not self.thread.is_alive():
            if replay:
                self._write(b"".join(self.state.dropped))
            os.close(self.read_end)
            os.close(self.saved)

    # -- the reader thread ---------------------------------------------------------------------------
    def _copy(self) -> None:
        state = self.state
        while True:
            if state.pending:
                ready, _, _ = select.select([self.read_end], [], [], _DECIDE_WITHIN_S)
                if not ready:
                    state.decide()
                    continue
            try:
                data = os.read(self.read_end, 65536)
            except OSError:  # EIO: a pty whose writers are all closed
                data = b""
            if not data:
                state.decide()
                return
            state.feed(data)

    def _write(self, data: bytes) -> None:
        while data:
            try:
                written = os.write(self.saved, data)
            except OSError:
                return  # the original output went away (a closed terminal): nothing to pass to
            data = data[written:]


class _LineState:
    """Passes bytes through except lines that start like NATIVE_LOG_LINE, deciding at each line start."""

    def __init__(self, write) -> None:
        self.write = write
        self.pending = b""     # the start of a line, not yet judged
        self.mode = "start"    # "start" (judging `pending`), "pass" or "drop" (until the line ends)
        self.dropped: collections.deque[bytes] = collections.deque(maxlen=REPLAY_LINES)

    def feed(self, data: bytes) -> None:
        while data:
            if self.mode == "start":
                self.pending += data
                data = b""
                if not self._judge():
                    return  # wait for more of the line
                data, self.pending = self.pending, b""
                continue
            end = _line_end(data)
            chunk, data = (data, b"") if end < 0 else (data[:end + 1], data[end + 1:])
            if self.mode == "pass":
                self.write(chunk)
            elif self.dropped and not self.dropped[-1].endswith((b"\n", b"\r")):
                self.dropped[-1] += chunk  # the rest of a dropped line that came in pieces
            else:
                self.dropped.append(chunk)
            if end >= 0:
                self.mode = "start"

    def decide(self) -> None:
        """Judge a held line start on what has arrived (no more came in time, or the output ended)."""
        if self.mode == "start" and self.pending:
            data, self.pending = self.pending, b""
            self.mode = "drop" if NATIVE_LOG_LINE.match(data) else "pass"
            self.feed(data)

    def _judge(self) -> bool:
        """Set the mode from `pending` if it can be told yet; True when it could."""
        head = self.pending
        if NATIVE_LOG_LINE.match(head):
            self.mode = "drop"
        elif _line_end(head) >= 0 or len(head) >= _LONGEST_PREFIX or not _may_start_native(head):
            self.mode = "pass"
        else:
            return False
        return True


def _line_end(data: bytes) -> int:
    """Index of the first line terminator (a progress bar's carriage return counts), or -1."""
    ends = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
    return min(ends) if ends else -1


def _may_start_native(head: bytes) -> bool:
    """Whether `head` could still grow into a native log line (only those are held back)."""
    return head[:1] == b"[" or (head[:1] in (b"D", b"I", b"W") and head[1:2] in (b"", b" "))


def _raw_pty(fd: int) -> tuple[int, int]:
    """A pseudo-terminal (reading end, writing end) in raw mode with the terminal's window size, so programs
    writing to it see a terminal, as they did, and their bytes come out untranslated."""
    import fcntl
    import termios
    import tty

    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        try:
            size = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
        except OSError:
            pass
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return master, slave
