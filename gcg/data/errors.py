"""The data errors: the message names the problem and the fix (one line).

A `DataError` is a ``ValueError``, so ``gcg.cli.run`` prints it as one line and exits with code 2.
"""


class DataError(ValueError):
    """Data malformed or misconfigured (a bad split, size or name). The message says what was
    expected and the fix."""


class DataUnavailable(DataError):
    """A data set's files are missing or unreadable, or a download failed. The message says where
    to get the data and where to put it (an offline set is the fallback)."""
