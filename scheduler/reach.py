"""Which candidates reach an accuracy floor, found without scanning the ones that do not.

Selection walks a task's candidates cheapest first and skips every one below the
caller's accuracy floor. With thousands of variants in a task and a high floor,
most of that walk is skipping: the cheap variants are the inaccurate ones. An
`AccuracyReach` answers "the first position at or after ``i`` whose accuracy is
at least ``floor``" in O(log n) with a max-tree over the accuracies in the
candidates' own (cost) order, built once with the candidate set. The walk's
order is unchanged, so the variant selected is the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["AccuracyReach"]


class AccuracyReach:
    """A max-tree over `accuracy` (positions in the candidates' order); immutable."""

    __slots__ = ("_max", "_size", "accuracy")

    def __init__(self, accuracy: Sequence[float]) -> None:
        self.accuracy: tuple[float, ...] = tuple(accuracy)
        """The accuracies by position, for the walk's own cheap check."""
        n = len(self.accuracy)
        size = 1
        while size < n:
            size *= 2
        tree = [-math.inf] * (2 * size)
        tree[size : size + n] = self.accuracy
        for v in range(size - 1, 0, -1):
            left, right = tree[2 * v], tree[2 * v + 1]
            tree[v] = left if left >= right else right
        self._size = size
        self._max = tree

    def first_from(self, i: int, floor: float) -> int:
        """The least position ``j >= i`` with ``accuracy[j] >= floor``; ``len`` when none."""
        n = len(self.accuracy)
        if i >= n:
            return n
        tree = self._max
        size = self._size
        v = i + size
        # climb: move right past every subtree whose best accuracy is below the floor
        while tree[v] < floor:
            while v & 1:
                v >>= 1
            if v == 0:
                return n
            v += 1
        # descend to the leftmost leaf of this subtree that reaches the floor
        while v < size:
            v <<= 1
            if tree[v] < floor:
                v += 1
        return min(v - size, n)
