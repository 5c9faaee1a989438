"""The one exception class for mistakes in the user's input (importable without torch).

Code raises :class:`UserError` on purpose when an option, a file or a row is wrong; the entry
points print it as one line, ``lmvision: error: ...``, and exit with status 2. Any other
exception is a bug (ours or a library's) and keeps its traceback, so that bugs are never
disguised as user mistakes.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's options, files or data, named in the message.

    It subclasses ``ValueError`` because that is what it is: a bad value given by the user.
    """


def user_error_in(err: BaseException | None) -> UserError | None:
    """The :class:`UserError` that caused ``err``: itself, or one in its chain of explicit
    causes (``raise ... from``), as when Hydra wraps it in an ``InstantiationException``, or
    the one a config resolver raised (OmegaConf re-raises it as an interpolation error). Any
    other error raised while *handling* a UserError is not one."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        resolving = type(err).__name__ == "InterpolationResolutionError"
        err = err.__cause__ or (err.__context__ if resolving else None)
    return None
