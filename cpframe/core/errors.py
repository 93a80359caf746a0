"""Every exception cpframe raises on purpose.

The CLI catches :class:`CpframeError` in one place (``cpframe.cli``), prints
its message without a traceback and exits with the class's ``exit_code``.
Anything else escaping is a bug and keeps its traceback.

Exit codes (documented for scripts):

====  ==========================================================
code  meaning
====  ==========================================================
0     success
1     a bug (unexpected exception) -- please report it
2     usage error (click) or invalid user input (``UserInputError``)
3     registry / collection / dataset problem (``RegistryError``)
4     template or submission problem (``TemplateError``, ``SubmissionError``)
5     planning found missing inputs (``PlanningError``)
6     execution failed on the cluster (``ExecutionError``)
7     verification found failing tests (``VerificationFailed``)
8     a required service is unavailable (``ServiceError``), disk full (``DiskFullError``)
130   stopped by SIGINT (``InterruptedRunError``, 128 + signal number)
143   stopped by SIGTERM (``InterruptedRunError``); the message says how to resume
====  ==========================================================

docs/guarantees.md lists every promise with the test that holds it.

Messages say what was wrong, show the value, and say what to do next.
"""

from __future__ import annotations

__all__ = [
    "CpframeError",
    "UserInputError",
    "ConfigError",
    "SelectionError",
    "RegistryError",
    "SchemaVersionError",
    "UnknownCollectionError",
    "CollectionTypeError",
    "CollectionNameError",
    "DatasetTypeNameError",
    "RunLockedError",
    "ChainCycleError",
    "ConflictingDefinitionError",
    "DatasetConflictError",
    "UnknownDatasetTypeError",
    "MissingDatasetError",
    "ValidityOverlapError",
    "AmbiguousCalibrationError",
    "BadDateError",
    "DatastoreError",
    "ChecksumError",
    "DiskFullError",
    "ExportError",
    "IngestError",
    "CameraError",
    "TemplateError",
    "UndefinedVariablesError",
    "SubmissionError",
    "PipelineError",
    "PlanningError",
    "ExecutionError",
    "InterruptedRunError",
    "ServiceError",
    "SubprocessError",
    "VerificationFailed",
    "CampaignError",
    "LedgerError",
    "LedgerTamperedError",
    "LifecycleError",
]


class CpframeError(Exception):
    """An error cpframe raises on purpose; the CLI prints it without a traceback."""

    exit_code = 2


class UserInputError(CpframeError, ValueError):
    """Invalid value given by the user (option, argument, file content)."""

    exit_code = 2


class ConfigError(UserInputError):
    """Invalid settings (cpframe.yaml, dask config, site file)."""


class SelectionError(UserInputError):
    """A selection (``where`` / ``dataQuery`` expression) that cannot be parsed or typed.

    Attributes
    ----------
    expression : str
        The whole expression.
    position : int or None
        0-based character offset of the offending token, if known.
    """

    def __init__(self, message: str, expression: str = "", position: int | None = None):
        self.expression = expression
        self.position = position
        self.reason = message
        if expression and position is not None:
            caret = " " * position + "^"
            message = f"{message}\n  {expression}\n  {caret}"
        elif expression:
            message = f"{message}\n  {expression}"
        super().__init__(message)


class RegistryError(CpframeError):
    """A registry operation that cannot be done as asked."""

    exit_code = 3


class SchemaVersionError(RegistryError):
    """The repository's schema version is not the one this cpframe understands."""


class UnknownCollectionError(RegistryError, LookupError):
    """A collection name that does not exist."""


class CollectionTypeError(RegistryError, TypeError):
    """A collection exists but has the wrong type for the operation."""


class CollectionNameError(RegistryError, ValueError):
    """A collection name with forbidden characters."""


class DatasetTypeNameError(RegistryError, ValueError):
    """A dataset type name that breaks the butler's naming rule."""


class RunLockedError(RegistryError):
    """A RUN is being written by another process (its lock row names the owner).

    Attributes
    ----------
    lock : dict
        The lock row: ``owner`` (``host:pid:token``), ``command``, ``started_ns``, ``heartbeat_ns``.
    """

    lock: dict = {}


class ChainCycleError(RegistryError):
    """A chain definition that would contain itself."""


class ConflictingDefinitionError(RegistryError):
    """Something registered again with a different definition."""


class DatasetConflictError(RegistryError):
    """A dataset type + data ID already present in a RUN."""


class UnknownDatasetTypeError(RegistryError, LookupError):
    """A dataset type name that is not registered."""


class MissingDatasetError(RegistryError, LookupError):
    """No dataset found where one was required."""


class ValidityOverlapError(RegistryError):
    """A certification whose validity range overlaps an existing one."""


class AmbiguousCalibrationError(RegistryError):
    """An exposure overlaps two validity ranges in one CALIBRATION collection."""


class BadDateError(UserInputError):
    """A date/time that is not an accepted TAI form."""


class DatastoreError(RegistryError):
    """A file in the datastore is missing, unreadable or inconsistent with its row."""


class DiskFullError(CpframeError):
    """The file system or the database ran out of space (``ENOSPC``, quota, SQLITE_FULL).

    Nothing half-written is kept; free space and run the command again.
    """

    exit_code = 8


class ChecksumError(DatastoreError):
    """A file's checksum does not match the one recorded."""


class ExportError(RegistryError):
    """An export directory or export file that cannot be written or read."""


class IngestError(CpframeError):
    """A raw file that cannot be ingested (the batch continues; see the report)."""

    exit_code = 3


class CameraError(UserInputError):
    """Unknown instrument, detector, amplifier or filter."""


class TemplateError(CpframeError):
    """A submission template that cannot be rendered (unset variables, unknown keys, bad YAML)."""

    exit_code = 4


class UndefinedVariablesError(TemplateError):
    """A template reads environment variables that are unset or ``{key}`` names that are unknown.

    Attributes
    ----------
    variables : list of str
        Unset environment variables (sorted).
    keys : list of str
        Unknown ``{key}`` names (sorted).
    """

    def __init__(self, message: str, variables: list[str] | None = None, keys: list[str] | None = None):
        self.variables = list(variables or [])
        self.keys = list(keys or [])
        super().__init__(message)


class SubmissionError(CpframeError):
    """A rendered submission whose keys are missing or invalid, or a RUN that already exists."""

    exit_code = 4


class PipelineError(SubmissionError):
    """A pipeline definition (``pipelines/*.yaml``) that is invalid."""


class PlanningError(CpframeError):
    """Planning found that required inputs (exposures, calibrations) are missing."""

    exit_code = 5


class ExecutionError(CpframeError):
    """Work failed on the cluster after its retries."""

    exit_code = 6


class InterruptedRunError(ExecutionError):
    """A submission stopped by SIGINT or SIGTERM after finishing or rolling back its registration.

    The exit code is ``128 + signal`` as for any process stopped by a signal: 130 for SIGINT
    (Ctrl-C), 143 for SIGTERM (Slurm at walltime, ``scancel``).  The message says how to resume.
    """

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)


class ServiceError(CpframeError):
    """A service (PostgreSQL, Slurm, Chromium) is not available."""

    exit_code = 8


class SubprocessError(ServiceError):
    """A subprocess failed; keeps the command, the exit code and stderr.

    Attributes
    ----------
    cmd : list of str
    returncode : int
    stderr : str
    """

    def __init__(self, message: str, cmd: list[str], returncode: int, stderr: str = ""):
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr
        detail = f"\n  command: {' '.join(self.cmd)}\n  exit code: {returncode}"
        if stderr.strip():
            detail += "\n  stderr: " + stderr.strip()[-2000:]
        super().__init__(message + detail)


class VerificationFailed(CpframeError):
    """A verification run or daily check found failing tests."""

    exit_code = 7


class CampaignError(CpframeError):
    """A campaign file that is invalid, or a campaign step that failed."""

    exit_code = 4


class LedgerError(RegistryError):
    """The approval ledger (``cpframe.repository.ledger``) cannot be read or written."""


class LedgerTamperedError(LedgerError):
    """A ledger row does not match its hash chain: it was edited outside cpframe."""


class LifecycleError(UserInputError):
    """A calibration set cannot make the asked transition (unknown set, wrong state, missing waiver)."""
