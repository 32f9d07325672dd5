"""User-facing errors.

Every path a user touches (CLI, Python API, demo, dataset preparation, prompt banks, checkpoints) raises a
subclass of :class:`DPSegError` with a one-line message that says what was wrong and how to fix it. The CLI
prints such errors as ``error: <message>`` and exits with status 2; anything else is a bug and keeps its
traceback.
"""


class DPSegError(Exception):
    """A problem with the user's input, files or environment (not a bug in dpseg)."""


class ConfigError(DPSegError, ValueError):
    """A bad config key, value or file."""


class CheckpointError(DPSegError):
    """A weight file that is missing, unreadable, truncated or does not match the model."""


class WeightsUnavailableError(CheckpointError):
    """Pretrained weights are not in the local cache and cannot be downloaded."""


class DataError(DPSegError):
    """A dataset, image or label that is missing or malformed."""


class BankError(DPSegError):
    """A prompt bank that is missing, incomplete or built for another model."""


class InputError(DPSegError, ValueError):
    """A bad argument to a public function (shapes, class lists, options)."""
