"""Errors that name the configuration field to fix (torch-free, so that parse-time checks can raise them)."""

from __future__ import annotations


class ConfigError(ValueError):
    """The workflow configuration is inconsistent, or does not fit the data it meets."""


class EvaluationError(ValueError):
    """Bad evaluation input; the message names the field, the value and the fix."""


class MissingDataError(EvaluationError):
    """A metric was called without the data it needs."""
