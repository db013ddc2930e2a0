"""The one exception type for user mistakes."""


class UserError(Exception):
    """A mistake the user can fix (a bad path, config value or data file): printed as one line, exit status 2.

    The message names the file, key or value at fault and what to do about it."""
