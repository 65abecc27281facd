"""Quiet output (sdk/console/quiet.py): native runtime log lines and torch's pytree notices hidden unless verbose.

The native lines are written to file descriptors, not to `sys.stderr`, so each check runs a child process
and reads what really reached its stdout and stderr: lines written from C with `libc.write`, and a real
ExecuTorch program loaded (its `[cpuinfo_utils.cpp:..]` / `[threadpool.cpp:..]` lines).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from sdk.console.quiet import NATIVE_LOG_LINE, PYTREE_LOGGER, quiet_native_logs

ROOT = Path(__file__).resolve().parents[1]


def _child(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, env=env,
                          timeout=timeout, cwd=ROOT)


C_WRITES = """
    import ctypes, os, sys
    from sdk.console.quiet import quiet_native_logs

    libc = ctypes.CDLL(None)

    def native(fd, text):
        data = text.encode()
        libc.write(fd, data, len(data))

    before = os.fstat(2).st_ino, os.fstat(1).st_ino
    with quiet_native_logs(verbose={verbose}):
        native(2, "[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version\\n")
        native(1, "I 00:00:00.001234 executorch:program.cpp:130] Loaded program\\n")
        native(2, "[threadpool.cpp:66] Resetting ")  # one line in two writes
        native(2, "threadpool to 1 threads.\\n")
        print("an ordinary line", flush=True)
        print("[ 1/2] an ordinary line that starts with a bracket", file=sys.stderr)
        sys.stderr.write("\\r  ... progress 1\\r  ... progress 2")
        sys.stderr.flush()
        native(1, "from C, ordinary\\n")
        try:
            with quiet_native_logs(verbose={verbose}):
                raise RuntimeError("inside")
        except RuntimeError:
            pass
    native(2, "[after.cpp:1] after the block: shown\\n")
    assert (os.fstat(2).st_ino, os.fstat(1).st_ino) == before, "descriptors not restored"
    print("done")
"""


def test_native_lines_from_c_are_dropped_and_ordinary_output_passes_unchanged():
    result = _child(C_WRITES.format(verbose=False), timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    out, err = result.stdout.decode(), result.stderr.decode()
    assert out == "an ordinary line\nfrom C, ordinary\ndone\n"
    assert err == ("[ 1/2] an ordinary line that starts with a bracket\n\r  ... progress 1\r  ... progress 2"
                   "[after.cpp:1] after the block: shown\n")


def test_verbose_keeps_every_native_line():
    result = _child(C_WRITES.format(verbose=True), timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    out, err = result.stdout.decode(), result.stderr.decode()
    assert "I 00:00:00.001234 executorch:program.cpp:130] Loaded program\n" in out
    assert "[cpuinfo_utils.cpp:71] Reading file" in err and "[threadpool.cpp:66] Resetting threadpool" in err


@pytest.fixture(scope="module")
def tiny_pte(tmp_path_factory) -> Path:
    """A one-layer ExecuTorch program lowered to XNNPACK: loading it starts ExecuTorch's threadpool."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module = torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()
    program = to_edge_transform_and_lower(torch.export.export(module, (torch.randn(1, 8),)),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    path = tmp_path_factory.mktemp("quiet") / "linear.pte"
    path.write_bytes(program.buffer)
    return path


LOAD_PTE = """
    import sys
    from sdk.console.quiet import quiet_native_logs

    print("before the block")
    with quiet_native_logs(verbose={verbose}):
        import device_runtime
        session = device_runtime.load({path!r}, num_threads=1)
        outputs = session.run(None, session.example_feed())
        print("ran: shape", outputs[0].shape)
        print("an ordinary stderr line", file=sys.stderr)
    print("after the block")
"""


def test_loading_a_pte_is_quiet_unless_verbose(tiny_pte):
    quiet = _child(LOAD_PTE.format(verbose=False, path=str(tiny_pte)))
    loud = _child(LOAD_PTE.format(verbose=True, path=str(tiny_pte)))
    for result in (quiet, loud):
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode() == "before the block\nran: shape (1, 4)\nafter the block\n"
        assert "an ordinary stderr line\n" in result.stderr.decode()
    # The loud run shows what the quiet one hides: ExecuTorch's threadpool lines and the pytree notice.
    loud_err = loud.stderr.decode()
    assert "[threadpool.cpp:" in loud_err and "[cpuinfo_utils.cpp:" in loud_err, loud_err
    assert quiet.stderr.decode() == "an ordinary stderr line\n"
    assert not [line for line in quiet.stderr.splitlines() if NATIVE_LOG_LINE.match(line)]


REPLAY = """
    import ctypes, sys
    from sdk.console.quiet import quiet_native_logs

    libc = ctypes.CDLL(None)
    try:
        with quiet_native_logs(verbose=False):
            libc.write(2, b"[program.cpp:114] File size is too small\\n", 41)
            print("ordinary", file=sys.stderr)
            raise RuntimeError("the load failed")
    except RuntimeError:
        print("caught", file=sys.stderr)
"""


def test_hidden_lines_are_shown_when_the_block_fails():
    result = _child(REPLAY, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.decode() == "ordinary\n[program.cpp:114] File size is too small\ncaught\n"


TRUNCATED_PTE = """
    import sys
    from sdk.console.quiet import quiet_native_logs

    try:
        with quiet_native_logs(verbose=False):
            import device_runtime
            device_runtime.load({path!r})
    except device_runtime.CorruptArtifactError as exc:
        print("error:", type(exc).__name__, file=sys.stderr)
"""


def test_a_failed_pte_load_keeps_executorchs_reason(tiny_pte, tmp_path):
    truncated = tmp_path / "truncated.pte"
    truncated.write_bytes(tiny_pte.read_bytes()[:600])
    result = _child(TRUNCATED_PTE.format(path=str(truncated)))
    assert result.returncode == 0, result.stderr.decode()
    err = result.stderr.decode()
    assert "[program.cpp:" in err and err.rstrip().endswith("error: CorruptArtifactError"), err


def test_pytree_deprecations_are_filtered_and_the_logger_restored():
    logger = logging.getLogger(PYTREE_LOGGER)
    level = logger.level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_native_logs(verbose=False):
            assert logger.level == logging.ERROR
            warnings.warn("torch.utils._pytree._register_pytree_node is deprecated. Please use "
                          "torch.utils._pytree.register_pytree_node instead.", FutureWarning)
            warnings.warn("`to_str_fn` and `maybe_from_str_fn` is deprecated.", FutureWarning)
            warnings.warn("an unrelated warning", UserWarning)
        with quiet_native_logs(verbose=True):
            warnings.warn("torch.utils._pytree._register_pytree_node is deprecated.", FutureWarning)
    assert [str(w.message) for w in caught] == ["an unrelated warning",
                                                "torch.utils._pytree._register_pytree_node is deprecated."]
    assert logger.level == level


def test_native_log_pattern():
    native = [b"[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version",
              b"[threadpool.cpp:66] Resetting threadpool to 1 threads.",
              b"I 00:00:01.000042 executorch:program.cpp:130] InternalConsistency verification requested"]
    # ExecuTorch's own error lines stay: they name what the exception does not (a missing operator, ...).
    kept = [b"E 00:00:01.000042 executorch:method.cpp:1100] Missing operator: [0] aten::foo.out",
            b"[ 1/2] export", b"[mobilevit_xxs] fp32: ok", b"I 00:00 is not a log line", b"Inputs: 2"]
    assert all(NATIVE_LOG_LINE.match(line) for line in native)
    assert not any(NATIVE_LOG_LINE.match(line) for line in kept)
