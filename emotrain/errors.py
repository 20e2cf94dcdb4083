"""User-facing errors: one line naming the file / line / key and what to do."""


class EmotrainError(Exception):
    """An error caused by the user's input or config. Printed as one line, no traceback."""


class DataError(EmotrainError):
    """A data file is missing, malformed or inconsistent."""


class ConfigError(EmotrainError):
    """A config value is impossible (beyond what the schema can check)."""


class CheckpointError(EmotrainError):
    """A checkpoint or bundle file cannot be used."""
