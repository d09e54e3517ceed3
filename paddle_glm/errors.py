"""Exceptions for mistakes a user can fix (bad files, bad arguments).

The CLI prints these as one line; anything else is a bug and keeps its traceback.
"""


class GLMError(ValueError):
    """A problem with the user's input: the message names the file, tensor or argument."""


class CheckpointError(GLMError):
    """A checkpoint file is missing, truncated, corrupt, unsafe or does not fit the model."""


class MissingFileError(CheckpointError):
    """A checkpoint file is not there; when a save replaced the checkpoint meanwhile, loading again works."""


class OutputExistsError(GLMError):
    """An output directory holds files already; the message names the option that replaces it.

    The Python API's option is ``overwrite=True``; a command line re-raises the error
    :meth:`naming` its own flag.
    """

    def __init__(self, path: str, problem: str, option: str = "overwrite=True"):
        self.path, self.problem, self.option = path, problem, option
        super().__init__(f"{path}: {problem}; pass {option} to replace it")

    def naming(self, option: str) -> "OutputExistsError":
        """The same error, telling the user to pass ``option`` (e.g. ``--overwrite``)."""
        return OutputExistsError(self.path, self.problem, option)
