"""Command-line flags generated from a job dataclass: one flag per field, named after it
(``d_sae`` -> ``--d-sae``), its default the dataclass's and its ``--help`` the field's docstring
(read by simple_parsing's docstring parser), so each option is documented once, on its field.

The few fields a plain ``--name VALUE`` does not fit (repeatable flags, negated booleans,
``FIELD=VALUE`` pairs, a positional argument) are spelled in ``SPELLINGS``.
"""

import argparse
import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from simple_parsing.docstring import get_attribute_docstring

from sae_lens_jumprelu.recipes import RECIPES

DTYPES = ("float32", "bfloat16", "float16")
"""Dtypes a language model can be loaded in."""

# Integer fields where 0 (or a negative number) means something; every other one is a count.
_NOT_COUNTS = {"seed", "checkpoint_every"}

Job = TypeVar("Job")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def config_item(text: str) -> tuple[str, Any]:
    """``FIELD=VALUE``, VALUE read as JSON (else kept as a string)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


@dataclass(frozen=True)
class Spelling:
    """How a field appears on the command line where the plain rule does not fit."""

    flags: tuple[str, ...] = ()
    """Its flag; empty: ``--`` and the field's name."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """``add_argument`` keywords over the generated ones (``action``, ``type``, ``metavar``)."""
    help: str | None = None
    """Help text instead of the docstring's (a negated flag says what it turns off)."""
    to_field: Callable[[Any], Any] | None = None
    """Parsed value -> field value (``FIELD=VALUE`` pairs -> a dict)."""
    positional: bool = False
    """A positional argument named after the field instead of a flag."""


SPELLINGS: dict[str, Spelling] = {
    "sae": Spelling(positional=True),
    "src": Spelling(positional=True),
    "dst": Spelling(positional=True),
    "sites": Spelling(("--site",), {"action": "append", "metavar": "SITE"}),
    "exclude_special_tokens": Spelling(
        ("--keep-special-tokens",),
        {"action": "store_false"},
        help="keep BOS/EOS/pad activations (dropped by default, as in the paper)",
    ),
    "zero_ablation": Spelling(
        ("--no-zero-ablation",),
        {"action": "store_false"},
        help="skip the zero-ablation pass (no CE-loss recovered; one forward pass less)",
    ),
    "sae_config": Spelling(
        ("--sae-config",),
        {"action": "append", "type": config_item, "metavar": "FIELD=VALUE", "default": []},
        help="a JumpReLUSTETrainingSAEConfig field of our SAEs over the recipe's, e.g. "
        "jumprelu_kernel=triangle or max_grad_norm=null (VALUE is read as JSON, else as a "
        "string); repeatable",
        to_field=dict,
    ),
    "dtype": Spelling(kwargs={"choices": DTYPES}),
    "recipe": Spelling(kwargs={"choices": sorted(RECIPES)}),
    "grids": Spelling(
        ("--grid",),
        {"action": "append", "metavar": "ARCH=V1,V2,...", "default": []},
        to_field=dict,
    ),
}


def add_job_flags(
    parser: argparse._ActionsContainer,  # a parser or a group of its flags
    job_class: type,
    names: tuple[str, ...] | None = None,
    *,
    types_: dict[str, Callable[[str], Any]] | None = None,
    choices: dict[str, Sequence[str]] | None = None,
    required: tuple[str, ...] = (),
) -> None:
    """A flag for each field of ``job_class`` (or those in ``names``, in that order).
    ``types_`` parses fields whose values need more than their annotation says; ``choices``
    lists the values of fields whose choices are known only at run time."""
    fields = {f.name: f for f in dataclasses.fields(job_class)}
    hints = typing.get_type_hints(job_class)
    defaults = job_class()
    for name in names or tuple(fields):
        spelling = SPELLINGS.get(name, Spelling())
        flags = () if spelling.positional else spelling.flags or (f"--{name.replace('_', '-')}",)
        kwargs: dict[str, Any] = {"dest": name} if flags else {}
        if types_ and name in types_:
            kwargs |= {"type": types_[name], "default": getattr(defaults, name)}
        else:
            kwargs |= _by_type(name, hints[name], getattr(defaults, name))
        kwargs |= spelling.kwargs
        if choices and name in choices:
            kwargs["choices"] = list(choices[name])
        if name in required:
            kwargs["required"] = True
            kwargs.pop("default", None)
        kwargs["help"] = _help(job_class, name, spelling, kwargs)
        parser.add_argument(*(flags or (name,)), **kwargs)


def job_from(job_class: type[Job], args: argparse.Namespace) -> Job:
    """The job whose fields are the parsed flags of the same names."""
    values = {}
    for f in dataclasses.fields(job_class):  # type: ignore[arg-type]
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            convert = SPELLINGS.get(f.name, Spelling()).to_field
            values[f.name] = convert(value) if convert else value
    return job_class(**values)


def _by_type(name: str, hint: Any, default: Any) -> dict[str, Any]:
    base = _without_none(hint)
    if base is bool:
        return {"action": "store_false" if default else "store_true"}
    origin = typing.get_origin(base)
    if origin is list:
        (item,) = typing.get_args(base)
        return {"action": "append", "type": item, "default": []}
    kwargs: dict[str, Any] = {"default": default}
    if typing.get_origin(base) is typing.Literal:
        kwargs["choices"] = typing.get_args(base)
    elif base is int:
        kwargs["type"] = int if name in _NOT_COUNTS else positive_int
    elif base is float:
        kwargs["type"] = positive_float
    elif base is Path:
        kwargs["type"] = Path
    elif base is str:
        pass
    elif name not in SPELLINGS:
        raise TypeError(f"no command-line spelling for {name}: {hint} (add one to SPELLINGS)")
    return kwargs


def _without_none(hint: Any) -> Any:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _help(job_class: type, name: str, spelling: Spelling, kwargs: dict[str, Any]) -> str:
    text = spelling.help or " ".join(
        get_attribute_docstring(job_class, name).docstring_below.split()
    )
    default = kwargs.get("default")
    shown = not spelling.positional and kwargs.get("action") not in (
        "store_true",
        "store_false",
        "append",
    )
    if shown and default is not None and "default" not in text.lower():
        text += f" (default: {default})"
    return text.replace("``", "").replace("%", "%%")
