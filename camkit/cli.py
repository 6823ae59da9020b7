"""The ``camkit`` command line. Commands come from plugins (``camkit_register_commands``),
keyed by their path: ``"plugins"``, ``"train image"``, ``"explain skeleton"`` ...

The longest registered path matching the start of the arguments wins, so ``camkit explain
skeleton ...`` and ``camkit explain FILES`` can both exist."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Command:
    """One command: ``add_arguments(parser)`` declares its options, ``run(args) -> exit code``."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


def list_plugins() -> list[dict[str, Any]]:
    """Installed plugins with the hooks each implements (does not import torch)."""
    from camkit.plugin_manager import get_plugin_manager

    return get_plugin_manager().describe()


def _plugins_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _plugins_run(args: argparse.Namespace) -> int:
    rows = list_plugins()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        where = row["module"] or ""
        dist = f" [{row['distribution']}]" if row["distribution"] else ""
        print(f"{row['name']:<12} {row['status']:<8} {where}{dist}")
        for hook in row["hooks"]:
            print(f"{'':<14}{hook}")
    return 0


def _registry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", default=None,
                        help="methods, layouts, models, datasets, metrics, renderers, ... (all when omitted)")


def _registry_run(args: argparse.Namespace) -> int:
    from camkit.plugin_manager import REGISTRY_HOOKS, registry

    kinds = [args.kind] if args.kind else sorted(REGISTRY_HOOKS)
    for kind in kinds:
        if kind == "axes":  # the built-in letters live in the core, not in a plugin
            from camkit.layout import axis_kinds

            print("axes: " + ", ".join(f"{letter} ({kind})" for letter, kind in axis_kinds().items()))
            continue
        entries = registry(kind)
        if kind == "methods" and args.kind:  # one method a line, with what its weights are
            width = max(map(len, entries), default=0)
            print("\n".join(f"{name:<{width}}  {getattr(method, 'description', '')}".rstrip()
                            for name, method in entries.items()))
            continue
        print(f"{kind}: {', '.join(entries) if entries else '(none)'}")
    return 0


BUILTIN_COMMANDS = {
    "plugins": Command("list installed plugins and the hooks each implements", _plugins_arguments, _plugins_run),
    "list": Command("list registered names (methods, layouts, models, datasets, ...)", _registry_arguments,
                    _registry_run),
}


def commands() -> dict[str, Command]:
    from camkit.plugin_manager import registry

    found = dict(BUILTIN_COMMANDS)
    for path, command in registry("commands").items():
        if path in found:
            raise ValueError(f"command {path!r} is built in and cannot be registered by a plugin")
        found[" ".join(path.split())] = command
    return found


def _usage(found: dict[str, Command]) -> str:
    lines = ["usage: camkit COMMAND [options]", "", "commands:"]
    lines += [f"  {path:<20} {cmd.help}" for path, cmd in sorted(found.items())]
    lines += ["", "camkit COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    found = commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(found))
        return 0
    if argv[0] == "--version":
        from camkit import __version__

        print(f"camkit {__version__}")
        return 0
    for length in range(len(argv), 0, -1):
        path = " ".join(argv[:length])
        if path in found:
            command = found[path]
            parser = argparse.ArgumentParser(prog=f"camkit {path}", description=command.help)
            command.add_arguments(parser)
            args = parser.parse_args(argv[length:])
            code = command.run(args)
            return int(code or 0)
    print(f"camkit: unknown command {argv[0]!r}\n\n{_usage(found)}", file=sys.stderr)
    return 2


INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)


def run() -> int:
    """The ``camkit`` console command: ``main`` with a user's mistakes (a bad option value, an unknown
    name, a missing, unreadable or unwritable file) reported as one line and exit status 2 instead of a
    traceback, and Ctrl-C as one line (saying what was kept, when the command says) and status 130;
    ``CAMKIT_TRACEBACK=1`` shows the traceback. Anything else still raises."""
    import os

    from camkit.plugin_manager import PluginError

    try:
        return main()
    except (ValueError, KeyError, OSError, PluginError) as exc:
        if os.environ.get("CAMKIT_TRACEBACK"):
            raise
        message = str(exc) if type(exc) is not KeyError else (exc.args[0] if exc.args else "")
        print(f"camkit: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if os.environ.get("CAMKIT_TRACEBACK"):
            raise
        print(f"camkit: interrupted{f': {exc}' if str(exc) else ''}", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
