"""``provenance watermark``: keyed embed / detect / trace, and keyless analysis."""
from __future__ import annotations

import click
from rich.text import Text

from provenance.commands.common import EXIT_FINDINGS, EXIT_OK, stderr_console
from provenance.fileio import to_json, write_atomic
from provenance.textsafe import safe_text

DECOY_HELP = "Innocent decoy keys scored beside the real ones to check the N(0,1) null (0: none)."


def _emit(document: dict, output: str | None) -> None:
    text = to_json(document)
    if output:
        write_atomic(output, text)
    else:
        click.echo(text, nl=False)


def _say(line: str) -> None:
    stderr_console.print(Text(safe_text(line)))


def _score_options(decoys: int, independent_decoys: bool, realign: str, precision: str, tensors: str | None):
    from provenance.watermark.detect import ScoreOptions
    from provenance.watermark.select import names_selector

    selector = names_selector(t.strip() for t in tensors.split(",") if t.strip()) if tensors else None
    return ScoreOptions(decoys=decoys, independent_decoys=independent_decoys, realign=realign, precision=precision, selector=selector)


def _common_score_options(func):
    options = [
        click.option(
            "--reference",
            type=click.Path(exists=True),
            help="The unmarked original (enables the reference and grid statistics).",
        ),
        click.option("--decoys", type=click.IntRange(0, 1_000_000), default=1000, show_default=True, help=DECOY_HELP),
        click.option(
            "--independent-decoys",
            is_flag=True,
            help="Draw every decoy key separately (slower) instead of FFT shifts of one stream.",
        ),
        click.option(
            "--realign",
            type=click.Choice(["auto", "never", "force"]),
            default="auto",
            show_default=True,
            help="Undo MLP permutations/rescaling against the reference before scoring.",
        ),
        click.option(
            "--precision",
            type=click.Choice(["auto", "f32", "f16", "bf16"]),
            default="auto",
            show_default=True,
            help="Precision the quantizer saw, for the grid statistic.",
        ),
        click.option(
            "--tensors", help="Comma-separated canonical tensor names to score (default: every block matrix)."
        ),
        click.option(
            "--threshold-z",
            type=float,
            default=7.0,
            show_default=True,
            help="Accusation threshold, fixed in advance (z >= 7: p = 1.3e-12 per test).",
        ),
        click.option(
            "-o", "--output", type=click.Path(dir_okay=False), help="Write the JSON result here instead of stdout."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group("watermark")
def command() -> None:
    """Keyed watermarks for model weights: embed per-client marks, detect and trace leaks
    (also after K-quant quantization), and analyze a difference without any key."""


@command.command("embed")
@click.argument("model", type=click.Path(exists=True))
@click.option(
    "--secret-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The owner's secret (>= 16 bytes).",
)
@click.option("--client", required=True, help="Client id whose key is embedded.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help="Marked copy: a GGUF file, a safetensors file, or an HF directory.",
)
@click.option(
    "--amplitude", type=float, default=1e-3, show_default=True, help="Mark amplitude relative to each row's std."
)
@click.option("--tensors", help="Comma-separated canonical tensor names to mark (default: every block matrix).")
@click.option("--report", type=click.Path(dir_okay=False), help="Write the JSON report here instead of stdout.")
def embed(
    model: str, secret_file: str, client: str, output: str, amplitude: float, tensors: str | None, report: str | None
) -> None:
    """Write a copy of MODEL (GGUF F16/F32, safetensors file or HF directory) carrying
    CLIENT's mark: each chosen weight moves by amplitude * row std * key. Prints the
    relative change per tensor (JSON on stdout, summary on stderr)."""
    from provenance.watermark.embed import embed_checkpoint
    from provenance.watermark.keys import DerivedKey, read_secret
    from provenance.watermark.select import names_selector

    selector = names_selector(t.strip() for t in tensors.split(",") if t.strip()) if tensors else None
    result = embed_checkpoint(model, output, DerivedKey(read_secret(secret_file), client), amplitude, selector)
    _emit(result.to_dict(), report)
    summary = result.summary()
    _say(f"marked {len(result.tensors)} tensors ({summary['n_marked']} weights) for client {client} -> {output}")
    _say(
        f"relative change {summary['rel_change_rms']:.3g}; RMS change / Q8_0 rounding noise {summary['q8_ratio_rms']:.3g}; "
        f"expected blind z ~ {summary['expected_blind_z']:.1f}"
    )
    raise SystemExit(EXIT_OK)


@command.command("detect")
@click.argument("candidate", type=click.Path(exists=True))
@click.option("--secret-file", type=click.Path(exists=True, dir_okay=False), help="The owner's secret (with --client).")
@click.option("--client", help="Client id whose derived key is tested.")
@click.option(
    "--key-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Explicit key: .npz of per-tensor arrays (GGUF or HF names).",
)
@_common_score_options
def detect(
    candidate: str,
    secret_file: str | None,
    client: str | None,
    key_file: str | None,
    reference: str | None,
    decoys: int,
    independent_decoys: bool,
    realign: str,
    precision: str,
    tensors: str | None,
    threshold_z: float,
    output: str | None,
) -> None:
    """Test whether CANDIDATE carries one key's mark. Reports z and p for each statistic
    (reference, grid, blind) with the decoy keys' distribution beside them. Exit 1 when
    a statistic reaches the threshold."""
    from provenance.watermark.keys import DerivedKey, FileKey, read_secret
    from provenance.watermark.trace import candidate_arch, trace

    if bool(key_file) == bool(secret_file or client) or (not key_file and not (secret_file and client)):
        raise click.UsageError("give either --key-file, or --secret-file with --client")
    key = (
        FileKey.load(key_file, candidate_arch(candidate)) if key_file else DerivedKey(read_secret(secret_file), client)
    )  # type: ignore[arg-type]
    result = trace(
        candidate,
        [key],
        reference,
        threshold_z,
        _score_options(decoys, independent_decoys, realign, precision, tensors),
    )
    document = result.to_dict(per_tensor=True)
    document["schema"] = "provenance.watermark-detect/1"
    document["detected"] = bool(result.accused)
    _emit(document, output)
    _summarise(result)
    raise SystemExit(EXIT_FINDINGS if result.accused else EXIT_OK)


@command.command("trace")
@click.argument("candidate", type=click.Path(exists=True))
@click.option(
    "--registry",
    required=True,
    type=click.Path(exists=True),
    help="Clients: a JSON registry or a directory (secret + clients.txt, and/or *.npz key files).",
)
@_common_score_options
def trace_cmd(
    candidate: str,
    registry: str,
    reference: str | None,
    decoys: int,
    independent_decoys: bool,
    realign: str,
    precision: str,
    tensors: str | None,
    threshold_z: float,
    output: str | None,
) -> None:
    """Score every client key of a registry on CANDIDATE and accuse only those reaching
    the fixed threshold (family-wise false-accusation bound reported). Several accused
    clients mean collusion. Exit 1 when anyone is accused."""
    from provenance.watermark.trace import candidate_arch, load_registry, trace

    keys = load_registry(registry, candidate_arch(candidate))
    result = trace(
        candidate, keys, reference, threshold_z, _score_options(decoys, independent_decoys, realign, precision, tensors)
    )
    _emit(result.to_dict(), output)
    _summarise(result)
    raise SystemExit(EXIT_FINDINGS if result.accused else EXIT_OK)


def _summarise(result) -> None:
    doc = result.to_dict(per_tensor=False)
    _say(
        f"{len(doc['clients'])} key(s), {doc['n_weights']} weights in {doc['n_tensors']} tensors; "
        f"statistics: {', '.join(result.score.statistics)}"
    )
    for client in doc["clients"][:10]:
        parts = [f"{s} z={v['z']:.2f}" for s, v in client["statistics"].items()]
        _say(f"  {'ACCUSED ' if client['accused'] else '        '}{client['key']}: {'; '.join(parts)}")
    for stat, d in doc["decoys"].items():
        if d.get("n"):
            _say(
                f"  decoys[{stat}]: n={d['n']} mean={d['mean']:.3f} std={d['std']:.3f} max={d['max']:.2f} KS p={d['ks_p']:.3g}"
            )
    rule = doc["rule"]
    _say(
        f"rule: z >= {rule['threshold_z']} over {rule['n_tests']} tests; "
        f"P(any false accusation) <= {rule['family_wise_false_accusation_bound']:.2g}"
    )
    if doc["collusion_suspected"]:
        _say(f"collusion suspected: {len(doc['accused'])} clients accused")


@command.command("analyze")
@click.argument("candidate", type=click.Path(exists=True))
@click.option("--reference", required=True, type=click.Path(exists=True), help="The original to compare against.")
@click.option(
    "--precision",
    type=click.Choice(["auto", "f32", "f16", "bf16"]),
    default="auto",
    show_default=True,
    help="Precision the quantizer saw (quantized candidates).",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the JSON result here instead of stdout.")
def analyze(candidate: str, reference: str, precision: str, output: str | None) -> None:
    """Without any key: is CANDIDATE - REFERENCE an i.i.d. small perturbation
    (watermark-like), a structured change (fine-tune-like), a rescale/permutation, or
    nothing (identical, precision rounding, exact quantization)? Evidence per tensor.
    Exit 1 when a change beyond rounding/quantization is found."""
    from provenance.watermark.analyze import analyze_checkpoint

    result = analyze_checkpoint(candidate, reference, precision=precision)
    _emit(result.to_dict(), output)
    _say(
        f"verdict: {result.verdict}; after realignment: {result.residual_verdict}  "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(result.counts.items()))})"
    )
    clean = result.verdict in ("identical", "precision", "exact-quantization", "nothing-compared")
    raise SystemExit(EXIT_OK if clean else EXIT_FINDINGS)
