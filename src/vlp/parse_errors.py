"""One line for a command-line or recipe error that jsonargparse reports as a chain of exceptions: where
the value came from (the command line or the last ``--config`` file that sets it), the key, the problem,
and a fix ("did you mean ...", the help command). :mod:`vlp.cli` raises it as a :class:`~vlp.errors.UserError`.
"""

from __future__ import annotations

import difflib
import pydoc
from argparse import ArgumentError
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml


def describe_parse_error(
    error: ArgumentError,
    args: Sequence[str],
    options: Iterable[str] = (),
    help_command: str = "python -m vlp --help",
    subcommands: Collection[str] = (),
) -> str:
    """One line for a jsonargparse error: where (file or command line), the key, the problem, a fix.

    jsonargparse reports a problem deep in a recipe as a chain of exceptions, one per level
    (``Parser key "model"`` -> ``Problem with given class_path 'vlp.models.vilt.ViLT'`` -> ...); the
    key path is read off that chain and the problem is its innermost exception.
    """
    links = _chain(error)
    problem = links[-1]
    path, class_path = _key_path(links)
    key = ".".join(path)
    text = _first_line(problem)
    if isinstance(problem, yaml.YAMLError):
        return _yaml_error(problem, _config_files(args))
    if text.startswith("unrecognized arguments: "):
        given = text.removeprefix("unrecognized arguments: ").split()
        hint = did_you_mean(given[0].split("=", 1)[0], options) if given else ""
        return f"command line: unknown option {' '.join(given)}{hint}; `{help_command}` lists the options"
    if text.startswith("Option '") and text.endswith("' is not accepted"):
        name = text.removeprefix("Option '").removesuffix("' is not accepted")
        full = ".".join([*path, name]) if path else name
        hint = did_you_mean(name, _class_arguments(class_path)) if class_path else ""
        owner = f"; {class_path} has no argument '{name}'" if class_path else ""
        return f"{_where(full, args)}: unknown key {full}{hint}{owner}"
    if text.startswith("the following arguments are required: "):
        names = text.removeprefix("the following arguments are required: ").split(", ")
        command = f"{args[0]}." if args and args[0] in subcommands else ""
        keys = [".".join([*path, name]).removeprefix(command) for name in names]
        fix = "" if _config_files(args) else "; give a recipe with --config RECIPE.yaml"
        return f"{_where(keys[0], args)}: no value for {', '.join(keys)}{fix}"
    if path == ["config"]:
        return f"--config: {text}"
    if text.startswith(NOT_A_CLASS_PATH) and _given(key, args) in NULLS:
        return (
            f"command line: {key}: the command line cannot set a part inside another part to null; put "
            f"`{path[-1]}: null` under its key in a file given with --config after the recipe"
        )
    if path and path[-1] == "init_args" and class_path:  # the class itself: its path or its import
        key = ".".join(path[:-1])
        return f"{_where(key, args)}: {key}: class_path '{class_path}': {text}"
    if not key:
        return text
    return f"{_where(key, args)}: {key}: {text}"


NOT_A_CLASS_PATH = "Expected a dot import path string"
NULLS = ("null", "None", "none", "~", "")


def _given(key: str, args: Sequence[str]) -> str | None:
    """The last value the command line gives ``--key`` (``--key=VALUE`` or ``--key VALUE``), if any."""
    option, value = f"--{key}", None
    for i, arg in enumerate(args):
        if arg.startswith(option + "="):
            value = arg.removeprefix(option + "=")
        elif arg == option and i + 1 < len(args):
            value = args[i + 1]
    return value


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes, outermost first, each message once (jsonargparse re-raises a parser's
    error unchanged at every level it passes)."""
    links: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and len(links) < 100:
        if not links or str(link) != str(links[-1]):
            links.append(link)
        link = link.__cause__
    return links


def _key_path(links: Sequence[BaseException]) -> tuple[list[str], str | None]:
    """The recipe key a chain of jsonargparse errors leads to, and the last class_path on the way."""
    path: list[str] = []
    class_path = None
    for link in links:
        text = _first_line(link)
        if text.startswith('Parser key "'):
            path.append(text.removeprefix('Parser key "').split('"', 1)[0])
        elif text.startswith("Problem with given class_path '"):
            class_path = text.removeprefix("Problem with given class_path '").split("'", 1)[0]
            path.append("init_args")
    return path, class_path


def _first_line(error: BaseException) -> str:
    return error_text(error).strip().split("\n", 1)[0].strip()


def error_text(error: BaseException) -> str:
    """An exception's message (a ``KeyError``'s without the quotes ``str`` adds)."""
    return str(error.args[0]) if isinstance(error, KeyError) and len(error.args) == 1 else str(error)


def _config_files(args: Sequence[str]) -> list[str]:
    """The ``--config`` / ``-c`` files of a command line, in order."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.removeprefix("--config="))
    return files


def _where(key: str, args: Sequence[str]) -> str:
    """Where ``key``'s value came from: the last of the command line's options and ``--config`` files
    that sets it (later ones override earlier ones); ``recipe`` when none does."""
    option = f"--{key}"
    source = "recipe" if _config_files(args) else "command line"
    for i, arg in enumerate(args):
        if arg == option or arg.startswith(option + "="):
            source = "command line"
        elif arg in ("--config", "-c") and i + 1 < len(args) and _file_sets(args[i + 1], key):
            source = args[i + 1]
        elif arg.startswith("--config=") and _file_sets(arg.removeprefix("--config="), key):
            source = arg.removeprefix("--config=")
    return source


def _file_sets(file: str, key: str) -> bool:
    """The YAML file sets the dotted ``key``."""
    try:
        value: Any = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


def _yaml_error(problem: yaml.YAMLError, files: Sequence[str]) -> str:
    """A YAML syntax error as ``FILE:LINE:COLUMN: ...``; jsonargparse parses the file's text, so the
    error itself does not name the file: the first given file that does not load is the one."""
    for file in files:
        try:
            yaml.safe_load(Path(file).read_text(encoding="utf-8"))
        except OSError:
            continue
        except yaml.YAMLError as own:
            return f"{file}{_yaml_position(own)}: not valid YAML: {_yaml_problem(own)}"
    return f"command line: a value is not valid YAML: {_yaml_problem(problem)}"


def _yaml_position(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


def _yaml_problem(error: yaml.YAMLError) -> str:
    problem = getattr(error, "problem", None)
    if problem is None:
        return _first_line(error)
    context, mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and mark is not None:
        return f"{problem} ({context} at line {mark.line + 1}, column {mark.column + 1})"
    return f"{problem} ({context})" if context else str(problem)


def _class_arguments(class_path: str) -> list[str]:
    """The arguments jsonargparse accepts for a class (including those its ``**kwargs`` pass on)."""
    from jsonargparse import ArgumentParser

    cls = pydoc.locate(class_path)
    if not isinstance(cls, type):
        return []
    parser = ArgumentParser(exit_on_error=False)
    try:
        parser.add_class_arguments(cls, fail_untyped=False)
        return list(parser.get_defaults().keys())
    except (TypeError, ValueError, ArgumentError):
        return []


def option_strings(parser: Any) -> list[str]:
    return [option for option in getattr(parser, "_option_string_actions", {}) if option.startswith("--")]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest candidate, or nothing."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""
