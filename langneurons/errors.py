"""Errors that name the field or value to fix (torch-free, so that parse-time checks and set files can raise them)."""

from __future__ import annotations


class ConfigError(ValueError):
    """The workflow configuration is inconsistent, or does not fit the data it meets."""


class NeuronSetError(ValueError):
    """A neuron set is malformed (columns, types, repeated neurons) or its file cannot be read."""


class NeuronIndexError(NeuronSetError):
    """A neuron address lies outside the model (or names no known site)."""


class EvaluationError(ValueError):
    """Bad evaluation input; the message names the field, the value and the fix."""


class MissingDataError(EvaluationError):
    """A metric was called without the data it needs."""
