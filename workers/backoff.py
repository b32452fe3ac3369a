"""Exponential backoff with jitter: how long a worker waits before trying the database again.

Each wait doubles, from ``initial_s`` up to ``max_s``, and is drawn at random between half the
current step and the whole of it, so that workers that lost the database at the same moment do
not all come back at the same moment. :meth:`Backoff.reset` after a success starts over.

Example:
    >>> import random
    >>> backoff = Backoff(initial_s=1.0, max_s=4.0, rng=random.Random(0))
    >>> [round(backoff.next_s(), 2) for _ in range(4)]  # steps 1, 2, 4, 4
    [0.92, 1.76, 2.84, 2.52]
    >>> backoff.reset()
    >>> 0.5 <= backoff.next_s() <= 1.0
    True
"""

from __future__ import annotations

import random


class Backoff:
    """Waits that double from ``initial_s`` to at most ``max_s``, each jittered (see the module)."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"need 0 < initial_s <= max_s, got {initial_s} and {max_s}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_s(self) -> float:
        """The wait before the next try: one more failure counted."""
        step = min(self.max_s, self.initial_s * 2 ** min(self.failures, 60))
        self.failures += 1
        return self._rng.uniform(step / 2, step)

    def reset(self) -> None:
        """A try succeeded: the next failure waits ``initial_s`` again."""
        self.failures = 0
