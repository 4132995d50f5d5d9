"""Errors that name the configuration field to fix (torch-free, so that parse-time checks can raise them)."""

from __future__ import annotations


class ConfigError(ValueError):
    """The workflow configuration is inconsistent, or does not fit the data it meets."""
