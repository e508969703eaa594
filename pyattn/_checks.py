"""Type predicates the argument and file checks share. A bool is an int to Python, but never a count, an index or a
size here: True passed as num_heads or read as a config's layer count is a mistake to name, not 1."""

from __future__ import annotations

import numpy as np


def is_int(value) -> bool:
    """An int or a numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or a float (numpy's included), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
