"""The one error type the command line shows as a single line.

`UsageError` is bad input — a config value, a path, a checkpoint, a data file, a setting a run cannot honour —
raised with a message that names the problem and the fix. The `gpt2-lightning` command prints such an error
as one line; any other exception is a bug and keeps its traceback.
"""


class UsageError(ValueError):
    """Bad input, with a message that says what to change."""


class CheckpointError(UsageError):
    """A checkpoint that is missing, unreadable or does not fit the model; the message says what to do."""
