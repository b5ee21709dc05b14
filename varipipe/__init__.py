"""varipipe: multi-stage inference pipelines on Ray Serve that adapt to load."""

from varipipe.errors import (
    BadInputError,
    ConfigError,
    LiveMeasurementError,
    ModelUnavailableError,
    ProfileError,
    ReconfigurationError,
    SolverError,
    SpecError,
    TraceError,
    UnknownNameError,
    VaripipeError,
)
from varipipe.records import (
    SLA,
    Accuracy,
    AccuracyKind,
    Decision,
    DecisionStatus,
    Observation,
    PipelineSpec,
    Profile,
    ProfilePoint,
    StageDecision,
    StageObservation,
    StageSpec,
    VariantSpec,
)

__version__ = "0.1.0"

__all__ = [
    "SLA",
    "Accuracy",
    "AccuracyKind",
    "BadInputError",
    "ConfigError",
    "LiveMeasurementError",
    "Decision",
    "DecisionStatus",
    "ModelUnavailableError",
    "Observation",
    "PipelineSpec",
    "Profile",
    "ProfileError",
    "ProfilePoint",
    "ReconfigurationError",
    "SolverError",
    "SpecError",
    "StageDecision",
    "StageObservation",
    "StageSpec",
    "TraceError",
    "UnknownNameError",
    "VariantSpec",
    "VaripipeError",
]
