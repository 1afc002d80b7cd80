"""Exception types shared by the stages."""


class MissingKeyError(KeyError, ValueError):
    """A user asked for keys or columns that are not there: a ``KeyError`` for code that looks
    them up, and a ``ValueError`` (a user error the command line prints in one line) for the rest.
    Programming errors stay plain ``KeyError`` and keep their traceback."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
