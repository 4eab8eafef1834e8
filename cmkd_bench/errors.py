"""Errors a user can cause. The CLI turns each into one line on stderr and exit code 2."""


class UserError(Exception):
    """A problem with the user's input: a name, a path, a file, a setting.

    The message is one line that names the problem and says what to do.
    """


class RunFailed(Exception):
    """A run that started but could not finish (for example a non-finite loss)."""
