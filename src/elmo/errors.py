"""Exceptions raised for bad configuration files, bad weight files and bad command lines."""

from __future__ import annotations


class ElmoError(Exception):
    """Base class of the errors this package raises about its inputs."""


class ConfigError(ElmoError, ValueError):
    """An options file (or options dictionary) that cannot describe an ELMo model."""


class WeightsError(ElmoError, ValueError):
    """A weight file that is missing, unreadable or inconsistent with the options."""


class UsageError(ElmoError):
    """A command line that contradicts itself or gives an impossible value (exit status 2)."""
