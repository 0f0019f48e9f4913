"""``provenance identify``: name a checkpoint's family from the reference database."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from rich.text import Text

from provenance.commands.common import ExitCode, say, stdout_console
from provenance.commands.options import build, options_from
from provenance.commands.paths import EXISTING_MODEL, download_option
from provenance.commands.refdb_cmd import refdb_option
from provenance.fileio import to_json, write_atomic
from provenance.refdb.options import IdentifyOptions
from provenance.textsafe import safe_text

if TYPE_CHECKING:  # the refdb modules import torch: load them only when the command runs
    from provenance.refdb import IdentifyResult


def render(result: IdentifyResult, top: int) -> None:
    out = stdout_console
    out.print(Text(f"{safe_text(result.path)}  [{result.format}]", style="bold"))
    if result.tokenizer:
        tok = result.tokenizer
        out.print(Text(safe_text(f"tokenizer: {tok.model}, {tok.vocab_size} tokens, sha256 {tok.tokens_sha256}", 300)))
    if result.claims:
        out.print(Text(safe_text("claims (metadata, not evidence): " + ", ".join(f"{k}={v}" for k, v in result.claims.items()), 300)))
    out.print(Text(safe_text(f"weights: {result.weights_summary}")))
    # One candidate per block of lines, not a table: evidence lines stay whole in CI logs.
    shown = [c for c in result.candidates if c.score > 0][:top]
    for rank, cand in enumerate(shown, 1):
        out.print(Text(safe_text(f"{rank}. {cand.entry_id} ({cand.family}): {cand.verdict}"), style="bold" if cand.matched else ""))
        for e in cand.evidence:
            if e.status != "unavailable":
                out.print(Text(safe_text(f"     {e.signal}: {e.status}, {e.detail}", 400)))
    if not shown:
        out.print(Text("no reference entry shares any signal with this file"))


@click.command("identify")
@click.argument("candidate", type=EXISTING_MODEL)
@download_option
@refdb_option
@click.option("--json", "as_json", is_flag=True, help="Print the JSON result (schema provenance.identify/1) instead of tables.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the JSON result to this file (atomically).")
@options_from(IdentifyOptions)
@click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True, help="Candidates shown in the table.")
def command(candidate: str, refdb_dir: str | None, as_json: bool, output: str | None, top: int, **options: Any) -> ExitCode:
    """Rank reference entries against CANDIDATE using only what the candidate file holds.

    Signals, strongest first: exact file hash, exact tensor hashes, weight fingerprint
    (centered correlation at seeded positions, calibrated against mismatched positions,
    reported as z and p), tokenizer (identical / extends / prefix / reordered / overlap),
    architecture. The fingerprint reads only the sampled blocks of the candidate.

    CANDIDATE may also be a tokenizer alone: a tokenizer.json, a SentencePiece
    tokenizer.model, a folder of tokenizer files, or a vocabulary-only GGUF.

    Exit status: 0 identified by evidence that no unrelated pair reaches (a hash, the
    weight fingerprint, or a calibrated tokenizer rule: identical list, same ids, same
    token set, identical merges); 1 no match (a large vocabulary holding a smaller one's
    tokens at other ids, or an architecture match, does not count); 2 input error.
    """
    from provenance.refdb import identify

    opts = build(IdentifyOptions, options)
    result = identify(candidate, refdb_dir, hashes=opts.hashes)
    document = result.to_dict()
    if output:
        write_atomic(output, to_json(document))
    if as_json:
        click.echo(to_json(document), nl=False)
    else:
        render(result, top)
    share = result.fingerprint_bytes_read / result.bytes_total if result.bytes_total else 0.0
    say(result.summary + f"; fingerprint read {result.fingerprint_bytes_read:,} bytes ({100 * share:.2f}%) in {result.seconds:.2f}s",
        2000)
    return ExitCode.OK if result.identified else ExitCode.FINDINGS
