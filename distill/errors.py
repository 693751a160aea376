"""The one exception tree of distill.

Every error the tool raises on purpose is a :class:`DistillError`. The CLI maps them to a one-line message
and an exit code; anything else is a bug and keeps its traceback.

    DistillError
    ├── UsageError              a flag, file or setting is wrong (exit 2); message says how to fix it
    │   └── ConfigError         the TOML file or an environment variable is wrong
    ├── InputError              an input file cannot be read at all (a bad *record* is a reject, not an error)
    ├── CacheError              the cache database is corrupt, foreign, too new, or locked by another run
    ├── TeacherError            a request to the teacher failed
    │   ├── TransientError      worth retrying: the engine's retry policy handles these
    │   │   ├── RateLimited     429, carries the server's ``retry_after`` when it sent one
    │   │   ├── ServerError     5xx
    │   │   ├── RequestTimeout  no answer within ``--request-timeout``
    │   │   ├── ConnectionFailed connection refused or reset
    │   │   └── MalformedResponse a body that is not the JSON the API promises, or has no answer in it
    │   └── PermanentError      4xx other than 429: retrying cannot help
    │       └── AuthenticationError 401/403: stops the whole run at once
    ├── CheckError              a fine-tuning file breaks the trainer's data rules
    └── TrainerError            a fine-tune back-end failed
"""

from __future__ import annotations


class DistillError(Exception):
    """Base class of every error distill raises on purpose."""

    exit_code = 1


class UsageError(DistillError):
    """A flag, file or setting is wrong; the message names it and says how to fix it."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration file or an environment variable is invalid."""


class InputError(DistillError):
    """An input file cannot be opened or is not in any format distill reads."""

    exit_code = 2


class CacheError(DistillError):
    """The cache database cannot be used (corrupt, foreign, newer schema, or in use)."""

    exit_code = 2


class TeacherError(DistillError):
    """A teacher request failed. ``status`` is the HTTP status where there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientError(TeacherError):
    """A failure that may go away if the request is sent again."""


class RateLimited(TransientError):
    """The server answered 429. ``retry_after`` is in seconds, when the server said."""

    def __init__(self, message: str, *, retry_after: float | None = None, status: int = 429) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class ServerError(TransientError):
    """The server answered 5xx."""


class RequestTimeout(TransientError):
    """No complete answer arrived within the request timeout."""


class ConnectionFailed(TransientError):
    """The connection was refused, reset or closed early."""


class MalformedResponse(TransientError):
    """The body was not valid JSON of the expected shape, or carried no answer."""


class PermanentError(TeacherError):
    """A 4xx (other than 429) answer: the request itself is wrong and retrying cannot help."""


class AuthenticationError(PermanentError):
    """401 or 403: the key is missing, wrong or lacks access. The run stops at once."""

    exit_code = 2


class RenderError(DistillError):
    """A conversation cannot be written in the chosen output format (the message says why)."""


class CheckError(DistillError):
    """A fine-tuning file breaks the data rules of its trainer."""


class TrainerError(DistillError):
    """A fine-tuning back-end failed to upload, start, follow or finish a job."""
