"""Exit codes, and the one place an exception becomes a message: scripts branch on the code, people read the line.

    0  success
    1  internal error: a bug in dbprompt (the traceback is printed for the bug report), or out of memory
    2  usage: a bad option or combination of options (argparse's own code for the same), an
       output that exists (pass --force), or an optional package the command needs is not installed
    3  bad data: a database, image, prompt file, index or ONNX export that is missing, unreadable, malformed,
       or does not belong with the rest (a DataError, PromptFileError, IndexFormatError, ...),
       including a backbone a file records that is not loaded from what the file says
    4  weights not available: a backbone's weights (or tokenizer) are neither on this machine nor to be
       had from the network; the message names the model and the routes that need no network
    5  busy: another run is writing that output (wait for it; a killed run's lock dies with it)
  141  the reader of the output went away (`dbprompt search ... --json | head -2`): the command stops
       quietly, as Unix tools do when SIGPIPE ends them

Only an internal error prints a traceback: every other message says what to fix.
"""

from __future__ import annotations

import sys
import traceback

OK, INTERNAL, USAGE, BAD_DATA, WEIGHTS_UNAVAILABLE, BUSY = 0, 1, 2, 3, 4, 5
INTERRUPTED = 130
PIPE_CLOSED = 128 + 13  # SIGPIPE


def _bad_data_types() -> tuple[type[BaseException], ...]:
    """Imported when an error is being handled, so building the parser imports nothing heavy."""
    from ..compat import IncompatibleError
    from ..data.errors import DataError
    from ..index.manifest import IndexFormatError
    from ..onnx.manifest import OnnxExportError
    from ..storage import PromptFileError

    return DataError, PromptFileError, IndexFormatError, OnnxExportError, IncompatibleError, OSError


def _raised_from(exc: BaseException, module: str, name: str) -> bool:
    """Whether `exc` is `module.name`, looked up, not imported: the backbone modules import open_clip
    (seconds), and if one was never imported nothing raised its errors."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(exc, getattr(loaded, name))


def exit_code(exc: BaseException) -> int:
    """The documented code for an exception (KeyboardInterrupt: 130, as shells expect)."""
    from ..locking import OutputBusyError, OutputExistsError

    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(exc, OutputBusyError):
        return BUSY
    if isinstance(exc, OutputExistsError) or _raised_from(exc, "dbprompt.onnx.towers", "OnnxRuntimeMissingError"):
        return USAGE
    if _raised_from(exc, "dbprompt.backbones.loading", "WeightsUnavailableError"):
        return WEIGHTS_UNAVAILABLE
    if isinstance(exc, _bad_data_types()) or _raised_from(exc, "dbprompt.backbones.recorded", "RecordedBackboneError"):
        return BAD_DATA
    if isinstance(exc, ValueError):
        return USAGE
    return INTERNAL


def _out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.OutOfMemoryError))


def report(command: str, exc: BaseException) -> int:
    """Print what went wrong on stderr and return the exit code."""
    code = exit_code(exc)
    prefix = f"dbprompt {command}: error:"
    if code == INTERRUPTED:
        print("interrupted", file=sys.stderr)
    elif _out_of_memory(exc):
        print(f"{prefix} out of memory ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); try a smaller --batch-size", file=sys.stderr)
    elif code == INTERNAL:
        traceback.print_exception(exc, file=sys.stderr)
        print(f"{prefix} internal error ({type(exc).__name__}: {exc}). This is a bug in dbprompt: please report it with the traceback above.", file=sys.stderr)
    else:
        print(f"{prefix} {exc}", file=sys.stderr)
    return code
