"""``provenance watermark``: keyed embed / detect / trace, and keyless analysis."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from provenance.commands.common import ExitCode, say
from provenance.commands.options import build, options_from
from provenance.commands.paths import EXISTING_MODEL, download_option
from provenance.commands.progress import progress_display
from provenance.fileio import to_json, write_atomic
from provenance.watermark.options import AnalyzeOptions, EmbedOptions, TraceOptions

if TYPE_CHECKING:
    from provenance.watermark import TraceResult

REFERENCE_HELP = "The unmarked original (enables the reference and grid statistics)."
OUTPUT_HELP = "Write the JSON result here instead of stdout."


def _emit(document: dict[str, Any], output: str | None) -> None:
    text = to_json(document)
    if output:
        write_atomic(output, text)
    else:
        click.echo(text, nl=False)


def _scoring_options(func: Any) -> Any:
    """The options detect and trace share: the reference, the scoring options, the output."""
    func = click.option("-o", "--output", type=click.Path(dir_okay=False), help=OUTPUT_HELP)(func)
    func = options_from(TraceOptions)(func)
    return download_option(click.option("--reference", type=EXISTING_MODEL, help=REFERENCE_HELP)(func))


@click.group("watermark")
def command() -> None:
    """Keyed watermarks for model weights: embed per-client marks, detect and trace leaks
    (also after K-quant quantization), and analyze a difference without any key."""


@command.command("embed")
@click.argument("model", type=EXISTING_MODEL)
@download_option
@click.option("--secret-file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The owner's secret (>= 16 bytes).")
@click.option("--client", required=True, help="Client id whose key is embedded.")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Marked copy: a GGUF file, a safetensors file, or an HF directory.")
@options_from(EmbedOptions)
@click.option("--report", type=click.Path(dir_okay=False), help="Write the JSON report here instead of stdout.")
def embed(model: str, secret_file: str, client: str, output: str, report: str | None, **options: Any) -> ExitCode:
    """Write a copy of MODEL (GGUF F16/F32, safetensors file or HF directory) carrying
    CLIENT's mark: each chosen weight moves by amplitude * row std * key. Prints the
    relative change per tensor (JSON on stdout, summary on stderr)."""
    from provenance.watermark.embed import embed_checkpoint
    from provenance.watermark.keys import DerivedKey, read_secret

    opts = build(EmbedOptions, options)
    with progress_display() as progress:
        result = embed_checkpoint(model, output, DerivedKey(read_secret(secret_file), client), opts.amplitude,
                                  opts.selector, progress=progress, threads=opts.threads)
    _emit(result.to_dict(), report)
    summary = result.summary()
    say(f"marked {len(result.tensors)} tensors ({summary['n_marked']} weights) for client {client} -> {output}")
    say(f"relative change {summary['rel_change_rms']:.3g}; RMS change / Q8_0 rounding noise {summary['q8_ratio_rms']:.3g}; "
        f"expected blind z ~ {summary['expected_blind_z']:.1f}")
    return ExitCode.OK


@command.command("detect")
@click.argument("candidate", type=EXISTING_MODEL)
@click.option("--secret-file", type=click.Path(exists=True, dir_okay=False), help="The owner's secret (with --client).")
@click.option("--client", help="Client id whose derived key is tested.")
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False),
              help="Explicit key: .npz of per-tensor arrays (GGUF or HF names).")
@_scoring_options
def detect(candidate: str, secret_file: str | None, client: str | None, key_file: str | None, reference: str | None,
           output: str | None, **options: Any) -> ExitCode:
    """Test whether CANDIDATE carries one key's mark. Reports z and p for each statistic
    (reference, grid, blind) with the decoy keys' distribution beside them. Exit 1 when
    a statistic reaches the threshold."""
    from provenance.watermark.keys import DerivedKey, FileKey, read_secret
    from provenance.watermark.trace import candidate_arch, trace

    if bool(key_file) == bool(secret_file or client) or (not key_file and not (secret_file and client)):
        raise click.UsageError("give either --key-file, or --secret-file with --client")
    key = FileKey.load(key_file, candidate_arch(candidate)) if key_file else DerivedKey(read_secret(secret_file), client)  # type: ignore[arg-type]
    with progress_display() as progress:
        result = trace(candidate, [key], reference, build(TraceOptions, options), progress=progress)
    document = result.to_dict(per_tensor=True)
    document["schema"] = "provenance.watermark-detect/1"
    document["detected"] = bool(result.accused)
    _emit(document, output)
    _summarise(result)
    return ExitCode.FINDINGS if result.accused else ExitCode.OK


@command.command("trace")
@click.argument("candidate", type=EXISTING_MODEL)
@click.option("--registry", required=True, type=click.Path(exists=True),
              help="Clients: a JSON registry or a directory (secret + clients.txt, and/or *.npz key files).")
@_scoring_options
def trace_cmd(candidate: str, registry: str, reference: str | None, output: str | None, **options: Any) -> ExitCode:
    """Score every client key of a registry on CANDIDATE and accuse only those reaching
    the fixed threshold (family-wise false-accusation bound reported). Several accused
    clients mean collusion. Exit 1 when anyone is accused."""
    from provenance.watermark.trace import candidate_arch, load_registry, trace

    keys = load_registry(registry, candidate_arch(candidate))
    with progress_display() as progress:
        result = trace(candidate, keys, reference, build(TraceOptions, options), progress=progress)
    _emit(result.to_dict(), output)
    _summarise(result)
    return ExitCode.FINDINGS if result.accused else ExitCode.OK


def _summarise(result: TraceResult) -> None:
    score = result.score
    say(f"{len(score.keys)} key(s), {score.n_weights} weights in {len(score.tensors)} tensors; "
        f"statistics: {', '.join(score.statistics)}")
    if not score.complete:
        say(f"every client decided after {score.weights_read} weights ({score.weights_read / max(1, score.n_weights):.2%} "
            f"of the model, {score.blocks_read} of {score.blocks_total} blocks in a seeded random order)")
    for client in result.clients()[:10]:
        parts = [f"{s} z={v.z:.2f}" for s, v in client.statistics.items()]
        mark = "ACCUSED " if client.accused else ("cleared " if client.decision == "cleared" else "        ")
        say(f"  {mark}{client.key}: {'; '.join(parts)}")
    for stat, d in result.decoys.items():
        if d.n:
            say(f"  decoys[{stat}]: n={d.n} mean={d.mean:.3f} std={d.std:.3f} max={d.max:.2f} KS p={d.ks_p:.3g}")
    rule = result.rule
    how = (f"sequential (always-valid boundary, or z >= {rule.full_pass_threshold_z:.3f} after a full pass)"
           if rule.sequential else f"z >= {rule.threshold_z}")
    say(f"rule: {how} over {rule.n_tests} tests; "
        f"P(any false accusation) <= {rule.family_wise_false_accusation_bound:.2g}")
    if result.collusion:
        say(f"collusion suspected: {len(result.accused)} clients accused")


@command.command("analyze")
@click.argument("candidate", type=EXISTING_MODEL)
@click.option("--reference", required=True, type=EXISTING_MODEL, help="The original to compare against.")
@download_option
@options_from(AnalyzeOptions)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help=OUTPUT_HELP)
def analyze(candidate: str, reference: str, output: str | None, **options: Any) -> ExitCode:
    """Without any key: is CANDIDATE - REFERENCE an i.i.d. small perturbation
    (watermark-like), a structured change (fine-tune-like), a rescale/permutation, or
    nothing (identical, precision rounding, exact quantization)? Evidence per tensor.
    Exit 1 when a change beyond rounding/quantization is found."""
    from provenance.watermark.analyze import analyze_checkpoint

    result = analyze_checkpoint(candidate, reference, build(AnalyzeOptions, options))
    _emit(result.to_dict(), output)
    say(f"verdict: {result.verdict}; after realignment: {result.residual_verdict}  "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(result.counts.items()))})")
    return ExitCode.FINDINGS if result.changed else ExitCode.OK
