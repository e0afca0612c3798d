"""The one exception type robgen raises for bad input; the CLI prints it as a one-line error."""


class RobgenError(Exception):
    """A user-facing problem: the message names what is wrong and, where possible, the fix."""

    def __init__(self, message: str = ""):
        # A DataLoader worker's error reaches the main process re-raised as RobgenError("Caught RobgenError in
        # DataLoader worker ...\nOriginal Traceback ...\n...RobgenError: <message>"): keep the message alone.
        text = str(message)
        if text.startswith("Caught RobgenError") and "\n" in text:
            last = text.rstrip().splitlines()[-1]
            text = last.split("RobgenError: ", 1)[-1]
        super().__init__(text)
