"""The one exception type for mistakes a user can fix (bad config, missing data, mismatched files)."""


class UserError(Exception):
    """A mistake in the user's config or files: the entry points print its message, not a traceback.

    The message should name the offending config key or file and say how to fix it.
    """
