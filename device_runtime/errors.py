"""Typed errors. `PocketformerError` is the root of every error the product raises on purpose; each carries
the exit code the command line maps it to, and subclasses a built-in so callers can catch broadly or precisely.

It lives here, at the bottom layer, because the device runtime must import without the rest of the product
and every other package may import it. An exception that is not a `PocketformerError` is a bug.
"""

# Exit codes scripts can trust (the CLI returns exactly these).
EXIT_OK = 0
EXIT_PARITY = 1        # verification failed: the artifact does not match PyTorch within the tolerance
EXIT_BAD_INPUT = 2     # bad usage or input: unknown model/format/option, unreadable file, wrong shape or dtype
EXIT_UNSUPPORTED = 3   # not supported here: format/precision combination, missing toolchain or runtime
EXIT_CONVERSION = 4    # the toolchain failed to convert the model
EXIT_RUNTIME = 5       # the runtime accepted the input and failed while running (a kernel or delegate error)
EXIT_BUG = 70          # an unexpected exception: a bug in Pocketformer or a tool it calls (EX_SOFTWARE)


class PocketformerError(Exception):
    """Root of the product's typed errors."""

    exit_code = EXIT_BAD_INPUT


class UnknownFormatError(PocketformerError, ValueError):
    """The file is not an artifact of any registered format."""


class CorruptArtifactError(PocketformerError, ValueError):
    """The file looks like a known format but is truncated or malformed."""


class IncompatibleProgramError(PocketformerError, ValueError):
    """A well-formed artifact that this runtime's version cannot run (an ExecuTorch program asking for operators,
    delegates or a schema the installed runtime lacks); refused before the runtime loads it. Exit 3: another
    runtime, or an export for this one, runs it."""

    exit_code = EXIT_UNSUPPORTED


class ArtifactNotFoundError(PocketformerError, FileNotFoundError):
    """No file or folder at the artifact path given."""


class BackendUnavailableError(PocketformerError, ImportError):
    """The runtime a backend needs is not installed (or not usable on this platform)."""

    exit_code = EXIT_UNSUPPORTED


class ExecutionError(PocketformerError, RuntimeError):
    """The runtime accepted the feed but failed while running the model (a kernel or delegate error)."""

    exit_code = EXIT_RUNTIME


class InputError(PocketformerError, ValueError):
    """A feed that does not match the model's inputs."""


class MissingInputError(InputError):
    pass


class UnexpectedInputError(InputError):
    pass


class ShapeError(InputError):
    pass


class DTypeError(InputError):
    pass


class ValueRangeError(InputError):
    """An integer input (a token id, token type or mask) outside the range the artifact records for it.

    Checked before the native runtime sees the feed: ExecuTorch's int8 embedding kernel aborts the whole process
    on an out-of-range id, and ONNX Runtime's Gather silently wraps a negative one."""


class NonFiniteInputError(InputError):
    """A float input holding NaN or Inf (rejected unless the session allows non-finite inputs)."""



class UsageError(PocketformerError, ValueError):
    """An argument the caller got wrong (an unknown option, a value out of range, a missing file)."""


class QueueFullError(PocketformerError, RuntimeError):
    """A `device_runtime.batching.Batcher` refused a request at once: its bounded queue is full (overload).

    Exit code 3 (not supported here, now), not 2: the request itself is valid, the server cannot take it at this
    load; retry later, or raise `max_queue_size` / add sessions. A script can tell it apart from bad input."""

    exit_code = EXIT_UNSUPPORTED
