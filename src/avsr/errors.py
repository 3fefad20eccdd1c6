"""The one base class for errors caused by the user's input (files, settings, environment).

The CLI prints these as one-line messages with a non-zero exit; anything else is a bug
and keeps its traceback.
"""


class AvsrError(Exception):
    """Bad input: the message names the file, value or setting at fault."""


class Interrupted(Exception):
    """The user stopped a long job (Ctrl-C) after what could be kept was saved; the CLI
    prints the message in one line and exits 130."""
