"""``provenance refdb``: build, list and show reference database entries."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from rich.table import Table
from rich.text import Text

from provenance.commands.common import ExitCode, say, stdout_console
from provenance.commands.paths import EXISTING_MODEL, download_option
from provenance.fileio import to_json
from provenance.textsafe import safe_text

if TYPE_CHECKING:  # the refdb modules import torch: load them only when a subcommand runs
    from provenance.refdb import RefEntry

REFDB_HELP = ("Reference database directory (default: $PROVENANCE_REFDB, else the database shipped with "
              "the package, data/reference_hashes).")


def refdb_option(func: Any) -> Any:
    return click.option("--refdb", "refdb_dir", type=click.Path(file_okay=False), default=None, help=REFDB_HELP)(func)


def _entry_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from provenance.refdb.schema import ID_PATTERN

    if not ID_PATTERN.match(value):
        raise click.BadParameter(f"must match {ID_PATTERN.pattern}")
    return value


@click.group("refdb")
def command() -> None:
    """Manage the reference database that `provenance identify` ranks against."""


@command.command("add")
@click.argument("path", type=EXISTING_MODEL)
@download_option
@click.option("--id", "entry_id", required=True, callback=_entry_id, help="Entry id (lower case letters, digits, . _ -).")
@click.option("--family", default=None, help="Model family the entry belongs to (default: the id).")
@click.option("--source", default="", help="Where the model came from (URL, repository, how it was obtained).")
@click.option("--license", "license_note", default="unknown", help="License note for the model the entry describes.")
@click.option("--description", default="", help="One line saying what the model is.")
@click.option("--derived-from", default=None, help="Id of the entry this model was derived from (e.g. quantized from).")
@click.option("--no-weights", is_flag=True, help="Skip the weight fingerprint (hashes, tokenizer and architecture only).")
@click.option("--force", is_flag=True, help="Replace an existing entry with the same id.")
@refdb_option
def add(path: str, entry_id: str, family: str | None, source: str, license_note: str, description: str,
        derived_from: str | None, no_weights: bool, force: bool, refdb_dir: str | None) -> ExitCode:
    """Build an entry from the local model at PATH (any supported format) and write it atomically.

    PATH may also be a tokenizer alone (tokenizer.json, tokenizer.model, a folder of
    tokenizer files): the entry then holds its file hashes and tokenizer fingerprint.
    Streams the model (file and tensor SHA-256, then one pass per tensor for its
    constancy and summary, in bounded chunks), so memory does not grow with its size.
    Exit status: 0 written, 2 input error.
    """
    from provenance.refdb import RefDB, build_entry

    db = RefDB(refdb_dir)
    entry = build_entry(path, entry_id, family or entry_id, source=source, license_note=license_note,
                        description=description, weights=not no_weights, derived_from=derived_from)
    written = db.write(entry, overwrite=force)
    say(f"wrote {written} ({', '.join(entry.signals())})")
    return ExitCode.OK


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@refdb_option
def list_entries(as_json: bool, refdb_dir: str | None) -> ExitCode:
    """List the entries of the reference database with the signals each holds."""
    from provenance.refdb import RefDB

    db = RefDB(refdb_dir)
    entries = db.entries()
    if as_json:
        click.echo(to_json([_brief(e) for e in entries]), nl=False)
    else:
        table = Table("id", "family", "signals", "facts", title=safe_text(str(db.directory)), title_justify="left")
        for e in entries:
            table.add_row(Text(safe_text(e.id)), Text(safe_text(e.family)), Text(", ".join(e.signals())),
                          Text(safe_text(e.provenance.get("kind", ""))))
        stdout_console.print(table)
    say(f"{len(entries)} entries in {db.directory}")
    return ExitCode.OK


@command.command("show")
@click.argument("entry_id")
@refdb_option
def show(entry_id: str, refdb_dir: str | None) -> ExitCode:
    """Print one entry's JSON (its arrays stay in the .npz beside it)."""
    from provenance.refdb import RefDB
    from provenance.refdb.schema import encode_entry

    db = RefDB(refdb_dir)
    entry = db.get(entry_id)
    text, _ = encode_entry(entry)
    click.echo(text, nl=False)
    return ExitCode.OK


def _brief(entry: RefEntry) -> dict[str, Any]:
    return {"id": entry.id, "family": entry.family, "description": entry.description, "signals": entry.signals(),
            "kind": entry.provenance.get("kind"), "derived_from": entry.derived_from}
