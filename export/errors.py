"""The one error type of the export package."""


class ExportError(Exception):
    """An export that cannot go on; the message is one line for people."""
