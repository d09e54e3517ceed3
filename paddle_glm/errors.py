"""Exceptions for mistakes a user can fix (bad files, bad arguments).

The CLI prints these as one line; anything else is a bug and keeps its traceback.
"""


class GLMError(ValueError):
    """A problem with the user's input: the message names the file, tensor or argument."""


class CheckpointError(GLMError):
    """A checkpoint file is missing, truncated, corrupt, unsafe or does not fit the model."""


class MissingFileError(CheckpointError):
    """A checkpoint file is not there; when a save replaced the checkpoint meanwhile, loading again works."""
