"""Typed errors of the device runtime. Each subclasses a built-in so callers can catch broadly or precisely."""


class UnknownFormatError(ValueError):
    """The file is not an artifact of any registered format."""


class CorruptArtifactError(ValueError):
    """The file looks like a known format but is truncated or malformed."""


class BackendUnavailableError(ImportError):
    """The runtime a backend needs is not installed (or not usable on this platform)."""


class ExecutionError(RuntimeError):
    """The runtime accepted the feed but failed while running the model (a kernel or delegate error)."""


class InputError(ValueError):
    """A feed that does not match the model's inputs."""


class MissingInputError(InputError):
    pass


class UnexpectedInputError(InputError):
    pass


class ShapeError(InputError):
    pass


class DTypeError(InputError):
    pass
