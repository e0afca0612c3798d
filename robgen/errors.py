"""The one exception type robgen raises for bad input; the CLI prints it as a one-line error."""


class RobgenError(Exception):
    """A user-facing problem: the message names what is wrong and, where possible, the fix."""
