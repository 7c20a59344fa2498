#!/usr/bin/env python3
"""Checks `vllm serve` command lines with the installed vLLM's own argument parser.

Reads JSON from standard input: a list of objects
    {"unit": "<id>", "argv": ["vllm", "serve", "<model>", "--flag", ...]}
and prints one JSON line per unit, in order:
    {"unit": "<id>", "ok": true}
    {"unit": "<id>", "ok": false, "error": "<vLLM's message>"}
Exits 0 when every unit is ok, 1 when one is not, 2 when the input itself is unusable.

Each argv goes through what `vllm serve` does before it starts anything:
  1. vLLM's parser: the `serve` subcommand of a FlexibleArgumentParser, built by vLLM's own
     ServeSubcommand (vllm.entrypoints.launchers.cli_args.make_arg_parser), so unknown flags,
     bad choices and values of the wrong type fail as they would for `vllm serve`;
  2. validate_parsed_serve_args, the serve command's checks that run before loading;
  3. AsyncEngineArgs.from_cli_args, which builds the engine arguments (and their nested
     configs, such as --compilation-config JSON);
  4. the constraints of the config fields behind the given flags (pydantic: for example
     ParallelConfig.tensor_parallel_size >= 1), which vLLM itself checks only later, when it
     builds its configuration around the model.
Nothing loads or even opens the model, and no device is touched. argparse's exit is turned
into an exception, so a failure is reported, not turned into a silent sys.exit.

Run it with the Python of the vLLM environment that scripts/setup-vllm.sh prepares:
    $EVALCTL_CACHE/vllm-venv/bin/python scripts/check-vllm-argv.py < units.json
Importing vLLM takes about 15 s; all units share one import.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

# vLLM logs to stdout by default; stdout is for the JSON lines.
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")


class CheckError(Exception):
    """A unit's argv is not accepted; the message is vLLM's."""


def build_parser():
    """vLLM's top-level parser with its `serve` subcommand, raising instead of exiting."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    class Parser(FlexibleArgumentParser):
        def exit(self, status=0, message=None):  # argparse's error() ends here
            raise CheckError(
                (message or f"the parser exited with status {status} (--help or the like)").strip()
            )

    parser = Parser(prog="vllm")
    subparsers = parser.add_subparsers(dest="subparser", parser_class=Parser)
    serve = ServeSubcommand().subparser_init(subparsers)
    return parser, serve


def config_classes() -> dict[str, type]:
    """vLLM's config classes by name, as the serve parser's argument groups are titled."""
    import vllm.config as config

    return {
        name: obj
        for name in dir(config)
        if name.endswith("Config") and isinstance(obj := getattr(config, name), type)
    }


def check_fields(serve, args, argv: list[str], classes: dict[str, type]) -> None:
    """Checks each given flag's value against its config field's constraints."""
    from pydantic import TypeAdapter, ValidationError

    for group in serve._action_groups:
        cls = classes.get(group.title or "")
        fields = getattr(cls, "__pydantic_fields__", None)
        if not fields:
            continue
        for action in group._group_actions:
            name = action.dest
            if name not in fields or not hasattr(args, name):
                continue
            value = getattr(args, name)
            if value == action.default:
                continue
            info = fields[name]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # dataclass-only Field() attributes
                    adapter = TypeAdapter(Annotated[info.annotation, info])
            except Exception:  # a type pydantic cannot check on its own: skip it
                continue
            try:
                adapter.validate_python(value)
            except ValidationError as err:
                # The spelling argv used (flags have aliases), else the first one.
                flag = next(
                    (o for o in action.option_strings
                     for a in argv if a == o or a.startswith(o + "=")),
                    action.option_strings[0] if action.option_strings else name,
                )
                reasons = "; ".join(e["msg"] for e in err.errors())
                raise CheckError(f"{flag} {value!r}: {reasons} ({cls.__name__}.{name})") from None
            except Exception:
                continue


def check(argv, parser, serve, classes) -> None:
    """Raises CheckError when vLLM would refuse argv."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args

    if (
        not isinstance(argv, list)
        or not all(isinstance(a, str) for a in argv)
        or len(argv) < 2
        or Path(argv[0]).name != "vllm"
        or argv[1] != "serve"
    ):
        raise CheckError("argv must be a list of strings starting with \"vllm\", \"serve\"")
    # The parser prints its usage (and --help its help) before exiting; keep stdout clean.
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            args = parser.parse_args(["serve", *argv[2:]])
        if getattr(args, "model_tag", None) is not None:
            args.model = args.model_tag  # what ServeSubcommand.cmd does
        validate_parsed_serve_args(args)
        AsyncEngineArgs.from_cli_args(args)
    except CheckError:
        raise
    except Exception as err:  # vLLM raises TypeError, ValueError, pydantic's errors...
        raise CheckError(str(err).removeprefix("Error: ") or type(err).__name__) from None
    check_fields(serve, args, argv, classes)


def main() -> int:
    try:
        units = json.load(sys.stdin)
        if not isinstance(units, list) or not all(
            isinstance(u, dict) and "unit" in u and "argv" in u for u in units
        ):
            raise ValueError('expected a list of {"unit": ..., "argv": [...]}')
    except ValueError as err:
        print(f"check-vllm-argv: error: bad input: {err}", file=sys.stderr)
        return 2
    try:
        parser, serve = build_parser()
        classes = config_classes()
    except ImportError as err:
        print(
            f"check-vllm-argv: error: {err}; run this with the Python that "
            "scripts/setup-vllm.sh prepares: $EVALCTL_CACHE/vllm-venv/bin/python",
            file=sys.stderr,
        )
        return 2
    all_ok = True
    for unit in units:
        result = {"unit": unit["unit"], "ok": True}
        try:
            check(unit["argv"], parser, serve, classes)
        except CheckError as err:
            result = {"unit": unit["unit"], "ok": False, "error": str(err)}
            all_ok = False
        print(json.dumps(result), flush=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
