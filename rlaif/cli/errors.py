"""The error every command raises for bad input (kept apart so that command modules need not import each other)."""


class UserError(Exception):
    """An error caused by the input; printed without a traceback, exit status 2."""
