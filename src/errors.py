"""The one exception type for mistakes a user can fix (bad config, missing data, mismatched files)."""


class UserError(Exception):
    """A mistake in the user's config or files: the entry points print its message, not a traceback.

    The message should name the offending config key or file and say how to fix it.
    """

    def __init__(self, message: str) -> None:
        # A DataLoader worker's error comes back as UserError("Caught UserError in DataLoader worker process
        # 0.\nOriginal Traceback ...\nsrc.errors.UserError: <message>"): keep the user's one paragraph.
        marker = f"{UserError.__module__}.{UserError.__qualname__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class Preempted(UserError):
    """The run stopped on SIGTERM after writing last.ckpt; the same command with resume=true continues it."""


def as_user_error(err: BaseException | None) -> UserError | None:
    """The UserError behind ``err``: Hydra's ``instantiate`` wraps a constructor's errors in its own."""
    while err is not None and not isinstance(err, UserError):
        err = err.__cause__
    return err
