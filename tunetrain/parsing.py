"""Numbers from config values: the one place that decides what counts as an int or a float.

The same rules everywhere: a bool is never a number (`True` is not 1 here); any int (numpy's too) is one, of any
size; a float with no fractional part is a whole number (`3.0` is 3). Where callers differ, a keyword says so:

- `strings=True`: a numeric string counts. YAML 1.1 (PyYAML) reads an exponent with no dot or no sign (`1e-4`,
  `1.0e4`) as a string, so a number from a file may arrive as `'1e-4'`.
- `keep_ints=True` (parse_float): an int stays an int (a count such as `cpu: 2` keeps its type).
- `finite=True` (parse_float): NaN and the infinities are not numbers; neither is an int past the float range.

Each function returns None for anything that is not a number by these rules, so the caller writes the message.
"""

from __future__ import annotations

import math
import numbers


def parse_int(value: object, *, strings: bool = False) -> int | None:
    """`value` as an int of any size, or None: an int, a float with no fractional part, or (with `strings`) a
    numeric string (`'12'`, `'1e3'`, `'3.0'`)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if strings and isinstance(value, str):
        try:
            return int(value.strip())  # exact, however many digits a float would round away
        except ValueError:
            pass  # `1e3` or `3.0`: read it as a float below
    number = parse_float(value, strings=strings, finite=True)
    if number is not None and number.is_integer():
        return int(number)
    return None


def parse_float(value: object, *, strings: bool = False, keep_ints: bool = False, finite: bool = False) -> float | None:
    """`value` as a float, or None: any real number or (with `strings`) a numeric string such as `'1e-4'`.

    An int past the float range is an infinity (`10**400` is inf); with `keep_ints` an int is returned as it is;
    with `finite` NaN and the infinities are None.
    """
    number = _real(value, strings=strings)
    if number is None or (finite and not math.isfinite(number)):
        return None
    if keep_ints and isinstance(value, numbers.Integral):
        return int(value)
    return number


def _real(value: object, *, strings: bool) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:  # an int past the float range
            return math.inf if value > 0 else -math.inf
    if strings and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
