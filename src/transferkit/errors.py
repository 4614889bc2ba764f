"""User-facing errors: each carries a message that says what is wrong and what to do.

Stages raise these instead of letting a traceback reach the user; ``stages.common.run_stage``
turns them into a red message and a non-zero exit code.
"""


class TransferkitError(Exception):
    """Base class; the message is shown to the user as is."""

    exit_code = 2


class ConfigError(TransferkitError):
    """params.yaml (or an override) is invalid."""


class DataError(TransferkitError):
    """Input data is missing, empty or unusable."""


class ModelError(TransferkitError):
    """A model, checkpoint or weight file cannot be built or loaded."""


class GateFailed(TransferkitError):
    """The candidate model broke one or more quality rules."""

    exit_code = 1


class ExportError(TransferkitError):
    """The exported ONNX model failed verification."""
