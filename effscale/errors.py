"""Exceptions the library raises; the CLI turns each into a one-line message.

Every message says what went wrong and what to do next.
"""


class EffscaleError(Exception):
    """Base class for every error effscale reports to a user."""


class ConfigError(EffscaleError):
    """A setting, coefficient or config file is invalid."""


class SanityLimitError(ConfigError):
    """A derived network is beyond the documented sanity limits."""


class RunDirError(EffscaleError):
    """A run directory is missing, locked, foreign or inconsistent."""


class TrialFailed(EffscaleError):
    """A single grid-search trial failed."""


class DatasetError(EffscaleError):
    """A dataset cannot be found, read or decoded."""


class WeightsError(EffscaleError):
    """A weights file is missing, corrupt or for another architecture."""


class InputRangeError(EffscaleError):
    """Images are not in the 0-255 range the models expect."""
