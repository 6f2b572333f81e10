"""The one error family the CLI turns into a one-line message and exit code 2."""


class UserInputError(ValueError):
    """Input a user can fix: the message names the field and the fix."""
