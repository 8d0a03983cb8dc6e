"""User-facing errors: one clear line naming the file, column or config key and what was expected."""

from __future__ import annotations


class QinError(Exception):
    """An error caused by the user's input or configuration; its message is shown without a traceback."""


class DataValidationError(QinError):
    """A dataset folder does not follow the MMCTR layout (see ``qin_lightning.data.layout``)."""


class ConfigError(QinError):
    """A configuration value is missing, unknown or inconsistent with the data."""
