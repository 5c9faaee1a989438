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


def message_of(user: UserError) -> str:
    """A user error's one-line message. Raised in a DataLoader worker, it comes back wrapped in
    the worker's traceback (``Caught UserError in DataLoader worker process 0.`` ...): the
    message is then its last line."""
    text = str(user).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        text = text.splitlines()[-1].partition(": ")[2].strip()
    return text or type(user).__name__


class Preempted(BaseException):
    """Ends a training run that was warned of its time limit or preemption, after it saved a
    checkpoint (see :mod:`lmvision.run.preemption`). A ``BaseException``, like ``SystemExit``: no
    ``except Exception`` on the way may take it for a failure of the run.

    Args:
        signum: The warning signal.
        handler: The handler the run had replaced (submitit's, which requeues the job).
        checkpoint: The checkpoint saved where the run stopped.
        epoch: The epoch it stopped in.
        step: The optimiser steps it had taken.
    """

    def __init__(self, signum: int, handler, checkpoint: str, epoch: int, step: int) -> None:
        super().__init__(f"stopped at epoch {epoch}, step {step} by signal {int(signum)}; "
                         f"saved {checkpoint}")
        self.signum, self.handler, self.checkpoint = signum, handler, checkpoint
        self.epoch, self.step = epoch, step

    def hand_over(self) -> None:
        """Give the signal to the handler that was replaced (submitit requeues and exits)."""
        if callable(self.handler):
            self.handler(self.signum, None)
