"""Generate the CLI reference (docs/cli.md) from click's own help texts."""
from __future__ import annotations

import click

from provenance.cli import cli


def _walk(command: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            found += _walk(command.commands[name], path + [name])
    return found


def commands() -> list[tuple[str, click.Command]]:
    """Every command as ``("provenance sub ...", command)``."""
    return [(" ".join(["provenance", *path]), cmd) for path, cmd in _walk(cli, [])]


def render_cli_reference() -> str:
    parts = ["# CLI reference\n", "Generated from the commands' own `--help` by `python -m provenance.clidocs > docs/cli.md`;",
             " a test fails when this file is out of date.\n",
             "\nExit codes shared by every command: 0 ok, 1 findings (policy violation, flagged result),",
             " 2 error (unreadable or malformed input), 64 usage error.\n"]
    for name, command in commands():
        # The group's context settings (``-h``) apply to every command, as when the CLI runs;
        # passing them here keeps the text independent of what ran before in the process.
        with click.Context(command, info_name=name, terminal_width=80, max_content_width=80,
                           **cli.context_settings) as ctx:
            help_text = command.get_help(ctx)
        parts.append(f"\n## `{name}`\n\n```text\n{help_text}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    print(render_cli_reference(), end="")
