"""All of varipipe's own exceptions.

    VaripipeError                 base; the CLI turns it into a message and exit code 2
    ├── ConfigError               a user-written file (spec, scenario, profile) is wrong;
    │   │                         the message names the file, the field and the bad value
    │   ├── SpecError             pipeline spec YAML
    │   └── ProfileError          profile store JSON
    ├── TraceError                a trace file line that cannot be parsed
    ├── UnknownNameError          unknown pipeline, stage, variant or policy
    ├── BadInputError             a request payload that cannot be served (-> HTTP 4xx)
    ├── ModelUnavailableError     weights missing; says which package/command brings them
    ├── SolverError               the solver itself failed (infeasible is a *status*, not this)
    ├── ReconfigurationError      applying a decision to the live app failed
    └── LiveMeasurementError      a live run's own figures (its /config) cannot be read

Third-party errors are wrapped with ``raise ... from e`` so the cause stays visible.
"""

from __future__ import annotations


class VaripipeError(Exception):
    """Base class of every error varipipe raises on purpose."""


class ConfigError(VaripipeError):
    """A user-written file is wrong. Message: file, field, bad value, rule."""

    def __init__(self, file: str, field: str, problem: str) -> None:
        self.file = file
        self.field = field
        self.problem = problem
        super().__init__(f"{file}: {field}: {problem}")


class SpecError(ConfigError):
    """A pipeline spec is invalid."""


class ProfileError(ConfigError):
    """A profile store file is broken or does not match what is asked of it."""


class TraceError(VaripipeError):
    """A trace file cannot be parsed; names the file and line."""

    def __init__(self, file: str, line: int, problem: str) -> None:
        self.file = file
        self.line = line
        super().__init__(f"{file}:{line}: {problem}")


class UnknownNameError(VaripipeError, KeyError):
    """An unknown pipeline, stage, variant or policy was named."""

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...]) -> None:
        self.kind = kind
        self.name = name
        self.known = tuple(known)
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(sorted(self.known)) or '(none)'}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class BadInputError(VaripipeError):
    """A request that cannot be served; carries the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


class ModelUnavailableError(VaripipeError):
    """Weights for a variant are not installed or not prepared."""


class SolverError(VaripipeError):
    """The ILP solver failed to run (not: the problem is infeasible)."""


class ReconfigurationError(VaripipeError):
    """A decision could not be applied to the running application."""


class LiveMeasurementError(VaripipeError):
    """A live experiment cannot read what it measures from the app (``GET /config`` refused or
    never answered): its cost and decisions would be missing, so the run stops and says why."""
