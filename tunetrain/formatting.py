"""How values and names appear in messages, tables and log lines.

`show_value` and `did_you_mean` build the "`x` is V, but RULE (did you mean `y`?)" messages of every error a user
can fix; `format_value` is how the result tables and log lines print a number.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable


def did_you_mean(word: object, candidates: Iterable[str], *, cutoff: float = 0.6) -> str:
    """` (did you mean `x`?)` for the closest candidate, or "" (for messages that name an unknown key).

    Case is ignored (`GPU` is `gpu`); a word that starts exactly one candidate means it (`grace` is
    `grace_period`); then swapped letters (`lgo` is `log`, though difflib rates `low` closer), then difflib's
    closest match. Never "; ": that separates the problems of one collected error.
    """
    if not isinstance(word, str):
        return ""
    candidates = list(candidates)
    lowered = word.lower()
    match = [c for c in candidates if c.lower() == lowered]
    starting = [c for c in candidates if lowered and c.lower().startswith(lowered)]
    match = match or (starting if len(starting) == 1 else [])
    match = match or [c for c in candidates if sorted(c) == sorted(word)]
    match = match or difflib.get_close_matches(word, candidates, n=1, cutoff=cutoff)
    return f" (did you mean `{match[0]}`?)" if match else ""


_SHORT = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 2, 56, 56
_SHORT.maxtuple = _SHORT.maxlist = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxfrozenset = 4


def show_value(value: object) -> str:
    """A value as a message shows it: its repr (shortened), with the type unless it is a plain YAML scalar.

    Bounded however big the value is: nested containers are cut after a few items and two levels (a YAML alias
    bomb holds billions of items by reference), an integer too long to print is shown by its size.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        text = f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    else:
        text = _SHORT.repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    if value is None or type(value) in (str, int, float, bool):
        return text
    return f"{text} ({type(value).__name__})"


def format_value(value: object) -> str:
    """A value as tables and log lines show it: floats to 4 significant digits, anything else as str()."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
