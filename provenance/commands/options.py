"""Click options generated from the analyses' options dataclasses (:mod:`provenance.options`).

A field declared with :func:`provenance.options.option` becomes one click option with the
field's default and help text, a ``Choice`` for a ``Literal`` type, a range check when the
field declares one, a flag for a boolean (``--<name>/--no-<name>`` when it defaults to True); the
command then rebuilds the dataclass from its parameters with :func:`build`. Defaults and help
texts therefore live in one place, and a name means the same thing in every command."""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import click

from provenance.options import OptionSpec, spec_of

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _base_type(hint: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def _click_type(hint: Any, spec: OptionSpec) -> click.ParamType:
    if spec.convert is not None:
        return click.STRING
    hint = _base_type(hint)
    if typing.get_origin(hint) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(hint)])
    low, high = spec.range if spec.range else (None, None)
    if hint is int:
        return click.IntRange(None if low is None else int(low), None if high is None else int(high)) if spec.range else click.INT
    if hint is float:
        return click.FloatRange(low, high) if spec.range else click.FLOAT
    return click.STRING


def _converter(spec: OptionSpec) -> Callable[[click.Context, click.Parameter, Any], Any] | None:
    convert = spec.convert
    if convert is None:
        return None

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return convert(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def click_option(field: dataclasses.Field[Any], hint: Any, spec: OptionSpec) -> Callable[[F], F]:
    """The click option of one options field."""
    name = field.name
    flag = spec.flag or "--" + name.replace("_", "-")
    decls = [d for d in (spec.short, flag) if d]
    default = field.default
    if _base_type(hint) is bool:
        if default:  # on unless turned off: --x/--no-x, the help saying what "on" does
            return click.option(f"{flag}/--no-{flag.removeprefix('--')}", name, default=True, show_default=True,
                                help=spec.help)
        return click.option(*decls, name, is_flag=True, default=False, help=spec.help)
    return click.option(*decls, name, type=_click_type(hint, spec), default=default, show_default=default is not None,
                        help=spec.help, metavar=spec.metavar, callback=_converter(spec))


def cli_fields(cls: type) -> list[tuple[dataclasses.Field[Any], Any, OptionSpec]]:
    """(field, resolved type, command-line form) of every option field of ``cls``."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name], spec) for f in dataclasses.fields(cls) if (spec := spec_of(f)) is not None]


def options_from(cls: type, *, exclude: Collection[str] = ()) -> Callable[[F], F]:
    """Decorator: one click option per option field of the dataclass ``cls`` (declaration order)."""
    chosen = [(f, hint, spec) for f, hint, spec in cli_fields(cls) if f.name not in exclude]

    def decorate(func: F) -> F:
        for f, hint, spec in reversed(chosen):
            func = click_option(f, hint, spec)(func)
        return func

    return decorate


def build(cls: type[T], params: dict[str, Any]) -> T:
    """``cls`` from the command's parameters: each option field taken (and removed) from ``params``."""
    names = {f.name for f, _, _ in cli_fields(cls)}
    return cls(**{name: params.pop(name) for name in list(params) if name in names})  # type: ignore[call-arg]
