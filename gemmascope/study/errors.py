"""The errors a study run expects, and how the command line tells them from bugs.

Synopsis:
    from gemmascope.study import errors
    raise errors.ConfigError("train.batch_size = -256: must be a positive integer")
    errors.is_expected(error)      # True: reported as one paragraph without a traceback
    errors.describe(error)         # that paragraph

Every error a user can cause or fix is a `StudyError` (a ValueError, so code that catches
ValueError keeps working):

    ConfigError       a config field, a flag or an input path is wrong (validate.py)
    WorkdirError      the workdir is in a state the run cannot continue from: another study's
                      config.json, a lock held by another run, a stage's prerequisite missing
    DamagedFileError  a file is damaged (truncated, not valid JSON, an unreadable checkpoint):
                      the message names the file and what to do
    CheckpointError   orbax could not write or read a job's checkpoints (disk full, permissions,
                      two writers): names the checkpoint folder and the underlying cause

The command line (gemmascope/study/main.py) also reports as one paragraph: OSError (files, disks,
permissions, networks: the message names the file), and ValueError or FloatingPointError raised
by the project's own code, which by the project's convention means bad input with a message
naming what is wrong (e.g. `activations.CacheError`, `train.NonFiniteLossError`). Anything else,
such as an AttributeError or a ValueError raised inside a library, is a bug and keeps its
traceback. `--traceback` shows the traceback of every error.
"""

from __future__ import annotations

import os
import traceback

_PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # gemmascope/


class StudyError(ValueError):
    """An error the user can fix: the message names the culprit and what to do."""


class ConfigError(StudyError):
    """A config field, a command-line flag or an input path is not valid."""


class WorkdirError(StudyError):
    """The workdir cannot be used as asked (another study, a lock, a missing stage output)."""


class DamagedFileError(StudyError):
    """A file of the workdir or of the inputs is damaged; the message names it."""


class CheckpointError(StudyError):
    """Orbax failed to save or restore a job's checkpoints; the message names the folder."""


def _raised_in_project(error: BaseException) -> bool:
    """True when the innermost frame of `error`'s traceback is gemmascope code."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    return os.path.abspath(frames[-1].filename).startswith(_PROJECT_DIR + os.sep)


def is_expected(error: BaseException) -> bool:
    """True for errors reported as one paragraph; False for bugs, which keep the traceback."""
    if isinstance(error, (StudyError, OSError)):
        return True
    return isinstance(error, (ValueError, FloatingPointError)) and _raised_in_project(error)


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of `error`'s cause/context chain, preferring an OSError."""
    chain, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    os_errors = [e for e in chain if isinstance(e, OSError)]
    return os_errors[-1] if os_errors else chain[-1]


def describe(error: BaseException) -> str:
    """One paragraph for an expected error: what went wrong and, in its message, what to do."""
    message = str(error).strip() or type(error).__name__
    if isinstance(error, OSError) and not isinstance(error, StudyError):
        message = f"{message} (a file or disk problem; fix it and rerun the same command)"
    return f"gemmascope: error: {message}\n(add --traceback to see where this was raised)"


def touches(error: BaseException, package: str) -> bool:
    """True if any frame of `error` or of its cause/context chain is in `package`'s files."""
    marker = f"{os.sep}{package}{os.sep}"
    current: BaseException | None = error
    seen = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(marker in frame.filename for frame in traceback.extract_tb(current.__traceback__)):
            return True
        current = current.__cause__ or current.__context__
    return False
