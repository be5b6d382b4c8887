"""User errors: what ``python -m vlp`` reports as one message and exit status 2, without a traceback.

The command line tells a mistake in what the user gave it (a recipe, a command-line value, a data folder, a
checkpoint) from a bug. A user error prints one message on stderr, ``vlp: error: ...``, saying what is
wrong, where (file, key, value) and how to fix it, and exits with status 2 (argparse's status for a usage
error). A bug raises as usual: traceback, status 1. ``--traceback`` anywhere on the command line (it is
removed before parsing) or ``VLP_DEBUG=1`` prints a user error's full traceback as well (still status 2).

These are user errors:

- every error of the command-line and recipe parser (jsonargparse): an unknown, misspelt or abbreviated
  key or option (abbreviations are never expanded), a value of the wrong type, a ``--config`` file that is
  missing or not valid YAML;
- :class:`UserError`, wherever it is raised: vlp raises it for given values that cannot work together
  (the data-vs-model checks of :mod:`vlp.checks`, an unknown tool command);
- Lightning's ``MisconfigurationException``, wherever it is raised (Lightning's own word for a bad setting);
- while a ``fit|validate|test|predict`` run is being set up, i.e. before its first batch (the recipe's
  classes are built, the data is checked against the model, the datamodule prepares and sets up its data, a
  checkpoint is restored), and anywhere in a tool command (``data``, ``zoo``, ``bench``):

  - a file error (``FileNotFoundError``, ``FileExistsError``, ``IsADirectoryError``, ``NotADirectoryError``,
    ``PermissionError``), whoever raises it: the file is one the user named;
  - a ``ValueError`` or ``KeyError`` raised by vlp's own code: its constructors check their arguments, its
    datamodules check a data folder, its checkpoint loaders name the keys that do not fit.

A constructor's error reaches the command line inside jsonargparse's own errors (one per level of the
recipe); it is judged, and reported, as the constructor raised it, with the class being built.

Anything else is treated as a bug: a ``RuntimeError``, any error raised inside torch or another library
(other than the file errors above), and a ``ValueError`` raised once batches run.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from types import ModuleType

FILE_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
CHECK_ERRORS: tuple[type[Exception], ...] = (ValueError, KeyError)


class UserError(ValueError):
    """A value the user gave cannot work; the message names it and says how to fix it."""


def debug_requested() -> bool:
    """``VLP_DEBUG`` is set to a true value (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get("VLP_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def raised_in(exc: BaseException, package: ModuleType) -> bool:
    """The statement that raised ``exc`` is in ``package``'s source."""
    frames = traceback.extract_tb(exc.__traceback__)
    root = Path(package.__file__ or "").resolve().parent
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(root)


def unwrap(exc: BaseException) -> BaseException:
    """The error a class raised while jsonargparse built it: jsonargparse re-raises it inside its own
    ``ValueError`` / ``TypeError`` (``raise ... from error``), once per level of the recipe."""
    import jsonargparse

    while exc.__cause__ is not None and raised_in(exc, jsonargparse):
        exc = exc.__cause__
    return exc


def is_user_error(exc: BaseException, setting_up: bool) -> bool:
    """Whether ``exc`` is the user's mistake by the rules of this module; ``setting_up`` is true before the
    first batch of a run and throughout a tool command."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    import vlp

    error = unwrap(exc)
    if isinstance(error, UserError | MisconfigurationException):
        return True
    if not setting_up:
        return False
    if isinstance(error, FILE_ERRORS):
        return True
    return isinstance(error, CHECK_ERRORS) and raised_in(error, vlp)
