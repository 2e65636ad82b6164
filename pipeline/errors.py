"""The one exception type for mistakes a user can fix (bad job file, missing path, unknown layer)."""


class UserError(Exception):
    """A problem in the user's input: the command line prints it and exits with code 2, no traceback."""
