"""Model inputs on the command line: a path, or a model store name (``hf:``, ``ORG/NAME``, ``ollama:``).

Every argument or option that names a model has the type :data:`MODEL`; commands that take
one also get ``--download`` (:func:`download_option`). Names are passed on unchanged, and
``open_checkpoint`` resolves them offline (:mod:`provenance.formats.locators`), so reports
name the model as the user did; ``--download`` only fetches into the Hugging Face cache
first, while the arguments are parsed, and is the only network access of any command.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
_DOWNLOAD = "provenance.download"
DOWNLOAD_HELP = ("Fetch models named hf:ORG/NAME[@REVISION] (or ORG/NAME) into the Hugging Face cache first; without "
                 "it, names resolve offline from the cache.")

BASE_HELP = ("The base model a PEFT adapter input applies to (default: the adapter's base_model_name_or_path, "
             "opened like any model name).")
MERGE_BASE_HELP = ("The common base of merged references (task arithmetic, TIES, DARE): merge weights are fitted "
                   "on deltas from it.")


class ModelInput(click.ParamType):
    """A model path or store name; with ``exists``, a plain path must exist (a usage error otherwise)."""

    name = "model"

    def __init__(self, exists: bool = False) -> None:
        self.exists = exists

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from provenance.formats.locators import fetch, is_locator

        text = os.fspath(value)
        if ctx is not None and ctx.meta.get(_DOWNLOAD):
            fetch(text)  # errors are input errors (exit 2), raised as they are
        if self.exists and not is_locator(text) and not os.path.lexists(text) and text.count("/") != 1:
            self.fail(f"{text!r}: no such file or folder (nor an hf:/ollama: model name)", param, ctx)
        return text


MODEL = ModelInput()
EXISTING_MODEL = ModelInput(exists=True)


def _remember_download(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.meta[_DOWNLOAD] = value
    return value


def download_option(func: F) -> F:
    """``--download``: processed before the model arguments, whatever its place on the line."""
    return click.option("--download", is_flag=True, is_eager=True, expose_value=False, callback=_remember_download,
                        help=DOWNLOAD_HELP)(func)
