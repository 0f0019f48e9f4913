"""Generate the CLI reference (docs/cli.md) from click's own help texts."""
from __future__ import annotations

import click

from provenance.cli import cli


def _walk(command: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in sorted(command.list_commands(ctx)):  # the CLI's group imports its commands on lookup
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            found += _walk(sub, path + [name])
    return found


def commands() -> list[tuple[str, click.Command]]:
    """Every command as ``("provenance sub ...", command)``."""
    return [(" ".join(["provenance", *path]), cmd) for path, cmd in _walk(cli, [])]


CONVENTIONS = """
Exit codes, the same for every command (`provenance.cli.main` is the only place that sets them):

| code | meaning |
|---|---|
| 0 | ok |
| 1 | findings: a policy violation, a flagged result, a match the command reports |
| 2 | an input could not be used: one line `error: <file> (field F, offset N): message` on stderr |
| 64 | usage error: bad options, an invalid policy file, an unknown output format |
| 70 | a bug in provenance: one line saying so; `provenance --debug ...` shows the traceback |
| 130 | interrupted (Ctrl-C) |

Options mean the same thing in every command that has them. Those of an analysis are generated
from its options dataclass (`CompareOptions`, `QuantCheckOptions`, `TraceOptions`...), so the
defaults below are the Python API's defaults too:

- `--threads N`: the most CPU threads the command keeps busy (compare streams N tensors at once
  with one torch thread each, and shares each chunk's grid check out between N threads; quantcheck
  and quantize split their compiled kernels' blocks between N threads, torch itself on one). The
  results do not depend on N: the grid checks' sums are reduced in an order fixed by the data.
  Defaults 2 (torch's own intra-op threads slow down badly when another process holds a core, so
  no command hands them more than one).
- `--jobs N` (scan): N worker processes, one model and one CPU thread each, so the same CPU
  budget as `--threads`; scan has no `--threads` (more torch threads per model only slow a busy machine).
- `--seed N`: the seed of every random draw (permutations, samples, decoy keys); same seed, same result.
- `--precision auto|f32|f16|bf16`: what the quantizer saw (quantcheck, watermark detect/trace/analyze).
- Long commands (quantize, quantcheck, compare, inspect --hashes, scan) show progress on stderr: a bar on a
  terminal, else a plain line every `PROVENANCE_PROGRESS_SECONDS` seconds (default 10); a phase that
  reports nothing for that long (a test computed after a pass) still gets a line, the task last heard
  from and how long ago (`..., last step 12s ago`), so no stretch is silent for more than an interval.
  Ctrl-C stops them and removes any partial output.
- `-o/--output`: where results go (a directory for commands that write several files, else a file);
  `--json`: the JSON document on stdout instead of the human summary.
- `--refdb DIR`: the reference database (identify, investigate, refdb).
- Model arguments (MODEL) are paths or model names: `hf:ORG/NAME[@REVISION][/FILE]`, a bare `ORG/NAME`
  (the local Hugging Face cache), `ollama:NAME[:TAG]` (Ollama's store), resolved offline
  (docs/locators.md); `--download` fetches `hf:` names into the cache first.
- `--base MODEL` (compare, investigate): the base model a PEFT adapter argument applies to.
- `--merge-base MODEL` (investigate): the common base of merged references (task arithmetic, TIES,
  DARE), for the merge weights; not the same as `--base`.
- `--debug` (before the command): tracebacks instead of one-line errors.
"""


def render_cli_reference() -> str:
    parts = ["# CLI reference\n", "Generated from the commands' own `--help` by `python -m provenance.clidocs > docs/cli.md`;",
             " a test fails when this file is out of date.\n", CONVENTIONS]
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
