"""The one error hierarchy: callers catch by meaning, never by backend library."""

from typing import Any


class KappaflowError(Exception):
    """Root of every error kappaflow raises on purpose."""


class SettingsError(KappaflowError):
    """A setting is unknown or has an invalid value; the message names it."""


class MissingExtra(KappaflowError):
    """A part of kappaflow is used without the optional dependencies of its extra; the
    message names the extra and the command that installs it."""

    def __init__(self, what: str, extra: str) -> None:
        self.extra = extra
        """The extra to install."""
        super().__init__(f"{what} needs the {extra} extra: pip install 'kappaflow[{extra}]'")


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


class ProcessorFailed(AppError):
    """An app's processor raised on a batch: its partition is halted there."""


class StateFormatError(KappaflowError):
    """State in the store is in a format its processor does not read (one written before
    the format changed): the message says which, and how to compute it again from the
    log."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what}: it was written before its format changed. Move the store aside (the "
            "SQLite file, or the PostgreSQL database) and start again: the workers compute "
            "the state and every result again from the log, as far back as it keeps events."
        )


class InvalidQuery(KappaflowError):
    """A query's parameters are wrong; the message says which and why."""


MAX_PROBLEMS = 20
"""The problems a refusal names; it counts all of them."""


class InvalidEvents(KappaflowError):
    """Records of a request do not match their stream's schema; ``problems`` name them
    (the first `MAX_PROBLEMS`). ``invalid`` counts them all, when more were found than
    ``problems`` holds."""

    def __init__(self, problems: list[Any], invalid: int | None = None) -> None:
        self.problems = problems[:MAX_PROBLEMS]
        """The problems named (of the first records, when there are many)."""
        self.invalid = len(problems) if invalid is None else invalid
        """How many records are invalid."""
        super().__init__(f"{self.invalid} invalid record(s), first: {problems[0]}")

    def summary(self, noun: str) -> str:
        """What a refused request is told: how many of its ``noun`` are invalid."""
        listed = (
            "" if self.invalid == len(self.problems) else f", the first {len(self.problems)} listed"
        )
        return f"{self.invalid} invalid {noun}(s){listed}; nothing was written"
