"""The one error hierarchy: callers catch by meaning, never by backend library."""


class KappaflowError(Exception):
    """Root of every error kappaflow raises on purpose."""


class SettingsError(KappaflowError):
    """A setting is unknown or has an invalid value; the message names it."""


class LogError(KappaflowError):
    """The log cannot do what was asked."""


class LogUnavailable(LogError):
    """The log cannot be written or read right now (disk full, locked, down)."""


class LogCorrupted(LogError):
    """A record inside the durable part of the log fails its checksum."""


class OffsetOutOfRange(LogError):
    """A read asked for an offset the log no longer (or does not yet) hold."""


class StoreError(KappaflowError):
    """The store cannot do what was asked."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or written right now."""


class StaleOwnership(StoreError):
    """A worker tried to commit for a partition another worker has since claimed."""


class AppError(KappaflowError):
    """An app is declared wrongly or cannot be loaded."""


class InvalidEvent(KappaflowError):
    """An event does not match its stream's schema."""
