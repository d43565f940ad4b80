"""Typed errors raised by the library; the CLI turns each into one line and an exit code.

EXIT_CODES is the one exit-code table: `toolkit --help` and the command epilogs are generated from it,
and a test holds README's table to it.
"""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_GATE = 4
EXIT_UNAVAILABLE = 5
EXIT_INTERRUPTED = 130

EXIT_CODES = (
    (EXIT_OK, "success"),
    (EXIT_ERROR, "an input, model, checkpoint or output path is unusable, or a model run failed or passed --run-timeout (the message names it)"),
    (EXIT_USAGE, "usage error (bad option or argument)"),
    (EXIT_PARTIAL, "finished, but some input files were skipped (predict)"),
    (EXIT_GATE, "a validation gate failed (export parity, INT8 accuracy)"),
    (EXIT_UNAVAILABLE, "requested environment unavailable (CUDA provider, display, the train, cluster or serve extra "
                       "not installed, a Ray cluster that cannot be joined)"),
    (EXIT_INTERRUPTED, "interrupted; files already completed are kept intact"),
)


class ToolkitError(Exception):
    """Base class: a problem the user can act on, reported without a traceback."""

    exit_code = EXIT_ERROR


class FileProblem(ToolkitError):
    """A specific file is unusable. The message always starts with the file's path."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # pickled as (path, reason): raised in a Ray task, it arrives whole at the driver
        return self.__class__, (self.path, self.reason)


class DataError(FileProblem):
    """A dataset file is missing, corrupt or has the wrong checksum."""


class CheckpointError(FileProblem):
    """A checkpoint cannot be loaded safely or does not hold this architecture."""


class ModelError(FileProblem):
    """An exported model (ONNX/TorchScript) is missing, corrupt or breaks its contract."""


class UserModuleError(FileProblem):
    """`export --module package.module:factory` cannot build a usable model: the module does not import, the
    factory is missing, not callable or returns no nn.Module, or the model refuses the given input shape.
    The "path" is the module:factory text as given."""


class MissingContract(ModelError):
    """An ONNX file without the toolkit's contract, and no (or not all) preprocessing options to describe it."""


class FlagsMismatch(FileProblem):
    """Preprocessing options that do not fit the model: its channels, its output width, or the contract it carries."""

    exit_code = EXIT_USAGE


class ConfigError(FileProblem):
    """A preprocessing config file (Hugging Face, timm, a model folder) that cannot be read, or holds a step
    the toolkit would have to guess about: a usage error, like an option that cannot be meant."""

    exit_code = EXIT_USAGE


class ImageError(FileProblem):
    """An input image cannot be decoded or is not allowed."""


class OutputError(FileProblem):
    """An output path cannot be written, or exists and would be replaced without --force."""


class ValidationFailed(ToolkitError):
    """An exported artefact does not match the reference beyond tolerance; ``report`` holds every number."""

    exit_code = EXIT_GATE

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class ProviderUnavailable(ToolkitError):
    """The requested execution provider (e.g. CUDA) cannot be used on this machine."""

    exit_code = EXIT_UNAVAILABLE


class ClusterUnavailable(ToolkitError):
    """--engine ray cannot run: Ray is not installed, or the cluster cannot be started, joined or refuses us."""

    exit_code = EXIT_UNAVAILABLE


class EngineUnavailable(ToolkitError):
    """A bench engine's library (torch, executorch, openvino; matplotlib for plots) is not installed or cannot be
    imported."""

    exit_code = EXIT_UNAVAILABLE


class ServeUnavailable(ToolkitError):
    """`toolkit serve` needs the serve extra (uvicorn, grpcio, orjson, prometheus_client), not installed here."""

    exit_code = EXIT_UNAVAILABLE


class BatchTooLarge(ToolkitError):
    """A bench batch size whose arrays cannot fit in the memory this machine has free."""

    exit_code = EXIT_USAGE


class TrainingDiverged(ToolkitError):
    """The loss or the weights became NaN/Inf (e.g. a learning rate far too high): exit 1, nothing is written."""


class DisplayUnavailable(ToolkitError):
    """No display is available for the drawing pad."""

    exit_code = EXIT_UNAVAILABLE


class NonFiniteOutput(ModelError):
    """The model computed NaN or Inf for some inputs: those rows are errors, never predictions."""

    def __init__(self, path: str | os.PathLike, rows: list[int]):
        self.rows = list(rows)
        super().__init__(path, f"the model's output is not finite (NaN or Inf) for {len(self.rows)} of the images")

    def __reduce__(self):
        return self.__class__, (self.path, self.rows)


class RunFailed(ModelError):
    """The model failed while running on a batch: ONNX Runtime's reason (a shape it refuses, an allocation it could
    not make), or a batch whose memory is not there. Exit 1; a predict run keeps the rows it had completed."""


class RunTimeout(RunFailed):
    """A run of the model passed its time limit (--run-timeout, per batch) and was stopped (toolkit.run_guard)."""

    def __init__(self, path: str | os.PathLike, reason: str, limit: float):
        super().__init__(path, reason)
        self.limit = limit


class RunInterrupted(KeyboardInterrupt):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) ended a run of the model in progress (toolkit.run_guard): handled
    as Ctrl-C (exit 130), what was completed before it is kept."""


# ---------------------------------------------------------------- `toolkit predict`

class NoImages(ToolkitError):
    """None of the given paths holds an image file."""


class WorkerDied(ToolkitError):
    """A decoding worker process ended abnormally; the rows predicted before its chunk are kept (``summary``)."""

    def __init__(self, message: str, start: int, summary=None):
        super().__init__(message)
        self.start, self.summary = start, summary


class PredictInterrupted(KeyboardInterrupt):
    """Ctrl-C/SIGTERM/SIGHUP stopped the run; ``summary`` (toolkit.predict.Summary) says what was done and kept."""

    def __init__(self, summary):
        super().__init__()
        self.summary = summary

    def __str__(self) -> str:
        return interrupted_message(self.summary)


def interrupted_message(summary) -> str:
    """What an interrupted predict run says last: where its kept rows are, or that nothing was asked for or kept.

    ``summary`` None: the run was stopped before it had any (start-up): nothing was written.
    """
    if summary is None:
        return "interrupted"
    if summary.output is not None:
        return f"interrupted; {summary.rows_written} complete row(s) kept in {summary.output}"
    if summary.discarded is not None:
        return f"interrupted after {summary.images} image(s); {summary.discarded}"
    return f"interrupted after {summary.images} image(s); no --output file was asked for"
