"""The command line parses its options without loading torch, and the lazy analysis packages
export the same names as eager ones (a function named like its submodule stays the function)."""
from __future__ import annotations

import subprocess
import sys


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout


def test_cli_and_options_load_without_torch() -> None:
    heavy = _python(
        "import sys, provenance.cli\n"
        "from provenance.commands.options import cli_fields\n"
        "from provenance.compare import CompareOptions\n"
        "from provenance.watermark import TraceOptions\n"
        "from provenance.quant import QuantCheckOptions\n"
        "from provenance.refdb import IdentifyOptions\n"
        "print(sorted(m for m in ('torch', 'numba', 'scipy.stats', 'pandas') if m in sys.modules))")
    assert heavy.strip() == "[]"


def test_lazy_exports_match_the_eager_names() -> None:
    out = _python(
        "import types\n"
        "import provenance.watermark.trace, provenance.refdb.identify  # submodules first, as a command does\n"
        "from provenance.watermark import trace, TraceResult, DEFAULT_THRESHOLD_Z\n"
        "from provenance.refdb import identify, IdentifyResult\n"
        "from provenance.compare import compare\n"
        "import provenance.watermark as wm\n"
        "functions = [f for f in (trace, identify) if callable(f) and not isinstance(f, types.ModuleType)]\n"
        "print(len(functions) == 2, trace.__module__, identify.__module__, compare.__module__, DEFAULT_THRESHOLD_Z,\n"
        "      sorted(wm.__all__) == sorted(set(wm.__all__)))\n"
        "try:\n"
        "    wm.no_such_name\n"
        "except AttributeError as exc:\n"
        "    print('AttributeError', exc)\n")
    first, second = out.strip().splitlines()
    assert first == ("True provenance.watermark.trace provenance.refdb.identify provenance.compare.api 7.0 True")
    assert second.startswith("AttributeError") and "no_such_name" in second


def test_identify_on_a_tokenizer_loads_no_analysis_library() -> None:
    """``provenance identify`` on a vocabulary needs neither torch (weight summaries), scipy
    (the normal tail is erfc) nor numba (a fresh process walks GGUF strings in Python, faster
    than loading the compiled loop): ~1.5 s of imports its < 1 s budget cannot carry."""
    from tests.conftest import VOCAB_DIR

    out = _python(
        "import sys\n"
        "from provenance.cli import main\n"
        "try:\n"
        f"    main(['identify', '--hashes', 'never', {str(VOCAB_DIR / 'ggml-vocab-phi-3.gguf')!r}])\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code)\n"
        "print(sorted(m for m in ('torch', 'numba', 'scipy.stats', 'pandas') if m in sys.modules))\n"
        "print(sorted(m for m in sys.modules if m.startswith('provenance.commands.') and m.endswith('_cmd')))")
    # Of the other commands only refdb's module, whose --refdb option identify shares (3 ms).
    assert out.strip().splitlines()[-3:] == ["exit 0", "[]",
                                             "['provenance.commands.identify_cmd', 'provenance.commands.refdb_cmd']"]


def test_every_command_is_registered_under_its_own_name() -> None:
    """The CLI imports a command's module when the command is looked up: each name of its
    table is the name the module's command declares, and ``--help`` lists them all."""
    import click

    from provenance.cli import COMMAND_MODULES, cli

    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(COMMAND_MODULES)
    for name in COMMAND_MODULES:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name


def test_version_and_usage_load_no_reader() -> None:
    """``provenance --version`` (and any command's option parsing) imports none of the
    readers (nor their gguf package): importing a submodule imports ``provenance`` first,
    whose exports are lazy (``provenance/__init__.py``). numpy is loaded by the CLI itself,
    before it limits BLAS threads (a limit reaches only the libraries loaded then)."""
    out = _python(
        "import sys\n"
        "from provenance.cli import main\n"
        "try:\n"
        "    main(['--version'])\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code)\n"
        "print(sorted(m for m in ('gguf', 'torch', 'provenance.formats') if m in sys.modules), 'numpy' in sys.modules)\n"
        "import provenance\n"
        "from provenance import open_checkpoint, inspect_checkpoint, CheckpointError\n"
        "print(open_checkpoint.__module__, inspect_checkpoint.__module__, CheckpointError.__module__)")
    lines = out.strip().splitlines()
    assert lines[-3:] == ["exit 0", "[] True", "provenance.formats provenance.inspect provenance.errors"]
