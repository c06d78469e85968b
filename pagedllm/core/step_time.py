"""A step's wall time predicted from what it computes, so that the scheduler can size prompt
chunks to keep a step near ``SchedulerConfig.step_time_target``.

Why: every running request's next token waits for the step in progress. A long prompt's
chunk of ``max_num_batched_tokens`` tokens costs more the more of the prompt is behind it
(attention): on two CPU cores a 2,048-token chunk at 6,000 tokens of context took 17-34 s,
and the server's other clients waited that long for each token (benchmarks/RESULTS.md, "One
whole-context prompt on the CPU server").

The model: ``seconds = c0 + c1 * tokens + c2 * pairs``, where ``tokens`` are the step's
scheduled tokens and ``pairs`` the (query, key) pairs of its prompt chunks (a chunk of c
tokens after n computed ones: c * n + c * (c + 1) / 2). It is fitted by least squares with
non-negative coefficients over the last steps that computed a chunk and, apart, the last
steps that did not, so that neither kind's terms are forgotten while the other kind runs. (A
term for the tokens the KV cache holds, what decodes read, was tried: with one long prompt
going in equal chunks it grows with the pairs, the fit gave it the chunks' cost, and the
next lone chunk took the whole budget: a 16.7 s step on the CPU.)

A chunk is trusted to at most twice the tokens of the largest step with a chunk remembered:
the fit extrapolates no further than that, so a wrong fit costs one step of twice the size
it has seen, and chunks grow by doubling while their steps stay within the target.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

# Steps of each kind (with a prompt chunk, without) that the fit remembers.
_ROWS = 16
# Steps with a chunk needed before the fit sizes chunks; until then chunks are at most
# PROBE_CHUNK tokens (while the fit cannot tell, a chunk's size is a guess: a small one).
_MIN_CHUNK_ROWS = 3
PROBE_CHUNK = 256
# Scales of the features (thousands of tokens, millions of pairs), which keep the normal
# equations well conditioned.
_SCALES = (1.0, 1e-3, 1e-6)
# How far past the largest remembered chunk step a chunk may go (a factor of its tokens).
_TRUST = 2


@dataclass(frozen=True)
class StepWork:
    """What one step computes, as the model reads it."""

    tokens: int
    pairs: int

    def features(self) -> tuple[float, float, float]:
        return (1.0, self.tokens * _SCALES[1], self.pairs * _SCALES[2])


def chunk_pairs(num_tokens: int, num_computed: int) -> int:
    """The (query, key) pairs of a chunk of ``num_tokens`` after ``num_computed`` tokens."""
    return num_tokens * num_computed + num_tokens * (num_tokens + 1) // 2


class StepTimeModel:
    """Recent steps' times against their work, and the largest chunk a step has room for."""

    def __init__(self) -> None:
        self._chunk_rows: deque[tuple[tuple[float, ...], float]] = deque(maxlen=_ROWS)
        self._other_rows: deque[tuple[tuple[float, ...], float]] = deque(maxlen=_ROWS)
        self._coef: tuple[float, float, float] | None = None  # None: refit first

    @property
    def ready(self) -> bool:
        return len(self._chunk_rows) >= _MIN_CHUNK_ROWS

    def observe(self, work: StepWork, seconds: float) -> None:
        rows = self._chunk_rows if work.pairs else self._other_rows
        rows.append((work.features(), seconds))
        self._coef = None

    def predict(self, work: StepWork) -> float:
        return sum(c * x for c, x in zip(self.coefficients(), work.features(), strict=True))

    def coefficients(self) -> tuple[float, float, float]:
        if self._coef is None:
            rows = [*self._chunk_rows, *self._other_rows]
            x = np.array([features for features, _ in rows])
            y = np.array([seconds for _, seconds in rows])
            self._coef = _nonnegative_fit(x, y)
        return self._coef

    def chunk_within(self, num_computed: int, seconds: float) -> int:
        """The most tokens a chunk after ``num_computed`` tokens can add to a step within
        ``seconds`` more (0: none fit)."""
        if seconds <= 0:
            return 0
        trusted = _TRUST * max(features[1] for features, _ in self._chunk_rows) / _SCALES[1]
        return min(self._fitted_chunk(num_computed, seconds), round(trusted))

    def _fitted_chunk(self, num_computed: int, seconds: float) -> int:
        _, c1, c2 = self.coefficients()
        # seconds(c) - seconds(0) = a c^2 + b c, with pairs(c) = c n + c (c + 1) / 2.
        a = c2 * _SCALES[2] / 2
        b = c1 * _SCALES[1] + c2 * _SCALES[2] * (num_computed + 0.5)
        if a <= 0:
            return int(seconds / b) if b > 0 else 1 << 62
        return int((-b + math.sqrt(b * b + 4 * a * seconds)) / (2 * a))


def _nonnegative_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares with every coefficient at least zero (active set: a feature whose
    coefficient comes out negative is dropped and the rest refitted; a cost cannot be
    negative, and a negative one would size chunks from noise)."""
    active = list(range(x.shape[1]))
    coef = np.zeros(x.shape[1])
    while active:
        solution = np.linalg.lstsq(x[:, active], y, rcond=None)[0]
        if (solution >= 0).all():
            coef[active] = solution
            break
        active = [i for i, value in zip(active, solution, strict=True) if value >= 0]
    return (float(coef[0]), float(coef[1]), float(coef[2]))
