"""Errors that name a problem in the user's input and its fix."""


class UserFacingError(Exception):
    """A problem with the user's input, reported as one clear message without a traceback."""
