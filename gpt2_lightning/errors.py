"""Every error the command line shows as a single line: bad input, named with its fix.

`UsageError` is bad input — a config value, a path, a checkpoint, a data file, a setting a run cannot honour —
raised with a message that names the problem and the fix. The `gpt2-lightning` command prints such an error as
one line; any other exception is a bug and keeps its traceback. The model core (config, model, attention, rope,
lm_loss) imports nothing from the package and raises plain `ValueError`; the layers above it turn the ones a user
caused into these.
"""


class UsageError(ValueError):
    """Bad input, with a message that says what to change."""


class CheckpointError(UsageError):
    """A checkpoint that is missing, unreadable or does not fit the model; the message says what to do."""


class DataError(UsageError):
    """Bad or missing training data; the message names the file (and line) and what to do instead."""


class RunError(UsageError):
    """A run that cannot start or go on as asked; the message says what to do instead."""
