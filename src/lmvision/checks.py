"""Checks of argument values, shared by every module: one place, one message style.

Each check names the argument it checks, as the constructor calls it (``batch_size``,
``mode``), and raises :class:`ArgumentError`, a plain ``ValueError`` that carries that name.
Modules under ``lmvision.nn`` and ``lmvision.data`` know nothing of configs: when one of them
is built from a config and refuses an argument, the config layer
(:func:`lmvision.config.build.user_errors`) turns the argument into the option the user wrote
(``data.batch_size``, ``strategy.net.mode``) and reports one line.

    batch_size = checks.whole_number("batch_size", batch_size)
    share = checks.fraction("val_fraction", val_fraction)
    mode = checks.choice("mode", mode, MODES)
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


class ArgumentError(ValueError):
    """A value an argument cannot take.

    Args:
        argument: The argument's name, as the constructor or function calls it.
        message: What is wrong, without the name (``expected a whole number``).
        value: The value given (shown as ``argument=value``).
    """

    def __init__(self, argument: str, message: str, value: Any = ...) -> None:
        self.argument, self.message, self.value = argument, message, value
        shown = argument if value is ... else f"{argument}={value!r}"
        super().__init__(f"{shown}: {message}")

    def renamed(self, option: str) -> str:
        """The same message with ``option`` (a config path) in place of the argument."""
        shown = option if self.value is ... else f"{option}={self.value!r}"
        return f"{shown}: {self.message}"


def whole_number(argument: str, value: Any, minimum: int | None = 1,
                 maximum: int | None = None) -> int:
    """``value`` as an int, refusing bools and floats such as 1.5 (``int()`` would floor them)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentError(argument, "expected a whole number", value)
    if minimum is not None and value < minimum:
        raise ArgumentError(argument, f"expected a whole number, at least {minimum}", value)
    if maximum is not None and value > maximum:
        raise ArgumentError(argument, f"expected a whole number, at most {maximum}", value)
    return value


def number(argument: str, value: Any, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float within ``[low, high]`` (``low_open``/``high_open``: excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ArgumentError(argument, "expected a number", value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        right = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = (f"in {left}, {right}" if low is not None and high is not None
                 else f"{'>' if low_open else '>='} {low:g}" if low is not None
                 else f"{'<' if high_open else '<='} {high:g}")
        raise ArgumentError(argument, f"expected a number {where}", value)
    return float(value)


def fraction(argument: str, value: Any, allow_zero: bool = False) -> float:
    """A share strictly between 0 and 1 (0 allowed with ``allow_zero``)."""
    return number(argument, value, 0.0, 1.0, low_open=not allow_zero, high_open=True)


def choice(argument: str, value: Any, options: Collection[Any]) -> Any:
    """``value`` when it is one of ``options``."""
    if value not in options:
        raise ArgumentError(argument, f"choose one of {', '.join(map(str, options))}", value)
    return value


def choices(argument: str, values: Any, options: Collection[Any]) -> tuple:
    """Every one of ``values`` (a list) among ``options``."""
    values = tuple(values or ())
    unknown = [v for v in values if v not in options]
    if unknown:
        raise ArgumentError(argument, f"{unknown[0]!r} is not one of "
                                      f"{', '.join(map(str, options))}")
    return values
