"""Argument checks: one place for the wording of every error.

Ops (and the layers, containers and training code above them) validate at their public entry and raise
ValueError/TypeError naming the op, the argument, what was expected and what came. Numbers and choices go through
one family: :func:`as_int` (whole numbers), :func:`as_float` (real numbers in a range), :func:`as_choice` (one of
a few values); each refuses a bool, which Python would otherwise take as 0 or 1. Internal helpers trust their
callers.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from array_api_compat import array_namespace, device, is_array_api_obj


def _require_array(op: str, name: str, a: Any) -> None:
    if not is_array_api_obj(a):
        raise TypeError(f"{op}: {name} must be an array (numpy, cupy, torch, array_api_strict, ...); "
                        f"got {type(a).__name__}")


OPTIONAL = frozenset({"b", "bias", "weight", "running_mean", "running_var"})   # may be None


def namespace(op: str, **arrays: Any) -> Any:
    """The array namespace shared by ``arrays`` (``None`` is allowed only for the optional arguments
    b, bias, weight, running_mean, running_var, and skipped).

    Raises TypeError when an argument is not an array or two come from different
    libraries, ValueError when they live on different devices.
    """
    first = None
    for name, a in arrays.items():
        if a is None:
            if name not in OPTIONAL:
                raise TypeError(f"{op}: {name} must be an array (numpy, cupy, torch, array_api_strict, ...); "
                                f"got None")
            continue
        if first is None:
            _require_array(op, name, a)
            first = (name, a, array_namespace(a))
            continue
        first_name, first_array, first_xp = first
        if type(a) is not type(first_array):       # cheap test first: one library means one array type
            _require_array(op, name, a)
            xp = array_namespace(a)
            if xp is not first_xp:
                raise TypeError(
                    f"{op}: {first_name} and {name} come from different array libraries "
                    f"({first_xp.__name__} and {xp.__name__}); put them on one backend, e.g. with xpcnn.asarray"
                )
        if device(a) != device(first_array):
            raise ValueError(
                f"{op}: {first_name} and {name} are on different devices ({device(first_array)} and {device(a)})"
            )
    if first is None:
        raise TypeError(f"{op}: no array among the arguments")
    return first[2]


def check_ndim(op: str, name: str, x: Any, ndim: int, layout: str = "") -> None:
    if x.ndim != ndim:
        what = f"{ndim}-D ({layout})" if layout else f"{ndim}-D"
        raise ValueError(f"{op}: {name} must be {what}; got shape {tuple(x.shape)}")


def check_floating(op: str, name: str, x: Any, xp: Any) -> None:
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{op}: {name} must have a floating dtype (float32 or float64); got {x.dtype}. "
            f"Convert it first, e.g. xp.astype({name}, xp.float32) (and scale 0..255 images to 0..1)"
        )


def check_same_dtype(op: str, x_name: str, x: Any, y_name: str, y: Any) -> None:
    if y is not None and y.dtype != x.dtype:
        raise TypeError(f"{op}: {y_name} must have the dtype of {x_name} ({x.dtype}); got {y.dtype}")


def check_shape(op: str, name: str, x: Any, shape: tuple) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}; got {tuple(x.shape)}")


def as_int(op: str, name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """A whole number (Python or NumPy int, not a bool) within [minimum, maximum] where given, as an int."""
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an integer; got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an integer or a pair of integers; got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}; got {value!r}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{op}: {name} must be <= {maximum}; got {value!r}")
    return number


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return "" if high is None else f"{'<' if high_open else '<='} {high:g}"


def as_float(op: str, name: str, value: Any, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (int or float of any library's scalar type, not a bool) within ``low``..``high``
    (each end closed unless ``low_open``/``high_open``), as a float."""
    wanted = " ".join(filter(None, ("a finite number", _range(low, high, low_open, high_open))))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be {wanted}; got {value!r}")
    number = float(value)
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if not math.isfinite(number) or too_low or too_high:
        raise ValueError(f"{op}: {name} must be {wanted}; got {value!r}")
    return number


def as_choice(op: str, name: str, value: Any, choices: tuple) -> Any:
    """The one of ``choices`` that ``value`` equals (a bool only matches a bool: True is not 1)."""
    for choice in choices:
        if value is choice or (isinstance(value, bool) is isinstance(choice, bool) and _equal(value, choice)):
            return choice
    raise ValueError(f"{op}: {name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):        # an array compared with a string, say
        return False


def pair(op: str, name: str, value: Any, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints as (height, width), each at least ``minimum``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{op}: {name} must be an integer or a pair (height, width); got {value!r}")
        try:
            return as_int(op, name, value[0], minimum), as_int(op, name, value[1], minimum)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{exc} (in {name}={value!r})") from None
    number = as_int(op, name, value, minimum)
    return number, number


def padding4(op: str, padding: Any) -> tuple[int, int, int, int]:
    """Padding as (top, bottom, left, right) from an int, a pair (h, w) or four values."""
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        return tuple(as_int(op, "padding", p, 0) for p in padding)
    ph, pw = pair(op, "padding", padding, 0)
    return ph, ph, pw, pw


def check_cache(op: str, cache: Any, kind: type) -> None:
    """A backward refuses another op's cache (or None) instead of computing garbage from it."""
    if not isinstance(cache, kind):
        forward = op.replace("_backward", "_forward")
        got = "None" if cache is None else f"a {type(cache).__name__}"
        raise TypeError(f"{op}: cache must be the {kind.__name__} that {forward} returned; got {got}")
