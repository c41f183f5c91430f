"""The one error type of the evaluation system: bad input (a file, a field, a request parameter), named."""

from __future__ import annotations


class EvaluationError(ValueError):
    """Evaluation input that cannot be scored: the message names the file, line, field or parameter."""


__all__ = ["EvaluationError"]
