"""``convert(src, dst, to)``: detect the source format, convert exactly, verify, write."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sae_lens_jumprelu.atomic import check_destination, write_dir_atomic, write_file_atomic
from sae_lens_jumprelu.convert import dictionary_learning, gemma_scope, sae_lens_format
from sae_lens_jumprelu.convert.gated import (
    InexactConversionError,
    Inexactness,
    gated_to_jumprelu,
    gated_with_b_dec_applied,
    jumprelu_to_gated,
)
from sae_lens_jumprelu.convert.verify import AnyWeights, Verification, verify
from sae_lens_jumprelu.convert.weights import ConversionError, GatedWeights, JumpReLUWeights

logger = logging.getLogger(__name__)

# float32 outputs of two exact conversions differ by a few roundings (the issue's bound)
REL_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-1}


@dataclass(frozen=True)
class Target:
    """A format ``convert`` can write."""

    description: str
    """One line for ``--help``."""
    is_file: bool
    """True if DST is one file, False if it is a directory."""
    write: Callable[[AnyWeights, Path], None]
    """Writes the converted weights to a (temporary) file or directory."""


def _write_sae_lens(weights: AnyWeights, path: Path) -> None:
    sae_lens_format.write_sae_lens(weights, path)


def _write_gemma(weights: AnyWeights, path: Path) -> None:
    assert isinstance(weights, JumpReLUWeights)
    gemma_scope.write_gemma_scope(weights, path)


def _write_dl(weights: AnyWeights, path: Path) -> None:
    assert isinstance(weights, JumpReLUWeights)
    dictionary_learning.write_dictionary_learning(weights, path)


TARGETS: dict[str, Target] = {
    "jumprelu": Target("SAELens 'jumprelu' directory (cfg.json + sae_weights.safetensors)", False,
                       _write_sae_lens),
    "gated": Target("SAELens 'gated' directory (W_enc, b_gate, r_mag, b_mag, W_dec, b_dec)", False,
                    _write_sae_lens),
    "gemma-scope": Target("Gemma Scope params file: DST.npz, or DST.safetensors (Gemma Scope 2)",
                          True, _write_gemma),
    "dictionary-learning": Target("dictionary_learning JumpReluAutoEncoder (ae.pt + config.json)",
                                  False, _write_dl),
    "sae-lens": Target("SAELens directory keeping the source architecture (gated stays gated)",
                       False, _write_sae_lens),
}  # fmt: skip


def detect_format(path: Path) -> str:
    """ "sae-lens", "gemma-scope" or "dictionary-learning", from the files at ``path``."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path} does not exist")
    if path.is_file():
        if path.suffix in (".npz", ".safetensors"):
            return "gemma-scope"
        raise ConversionError(
            f"{path} is a file but not a Gemma Scope params.npz / params.safetensors; other "
            "formats are directories"
        )
    names = {p.name for p in path.iterdir()}
    if {sae_lens_format.CFG_FILENAME, sae_lens_format.WEIGHTS_FILENAME} <= names:
        return "sae-lens"
    if dictionary_learning.WEIGHTS_FILENAME in names:
        return "dictionary-learning"
    if names & {gemma_scope.NPZ_FILENAME, gemma_scope.SAFETENSORS_FILENAME}:
        return "gemma-scope"
    raise ConversionError(
        f"cannot tell the format of {path}: expected cfg.json + sae_weights.safetensors (SAELens), "
        "ae.pt + config.json (dictionary_learning) or params.npz / params.safetensors (Gemma Scope)"
    )


def load(
    path: Path,
    release_path: str | None = None,
    hook_name: str | None = None,
    d_in: int | None = None,
) -> AnyWeights:
    """Read any supported format (detected from its files)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "sae-lens":
        weights = sae_lens_format.read_sae_lens(path)
    elif fmt == "dictionary-learning":
        weights = dictionary_learning.read_dictionary_learning(path)
    else:
        weights = gemma_scope.read_gemma_scope(path, release_path, hook_name, d_in)
    if d_in is not None and weights.d_in != d_in:
        raise ConversionError(f"{path}: d_in is {weights.d_in}, expected {d_in}")
    if hook_name is not None:
        weights.metadata["hook_name"] = hook_name
    return weights


@dataclass(frozen=True)
class ConversionResult:
    """What ``convert`` did."""

    source_format: str
    """The detected source format."""
    target: str
    """The target format name (a key of TARGETS)."""
    clamped: list[int]
    """Gated latents whose negative implied threshold became 0 (exact under the ReLU)."""
    issues: list[Inexactness]
    """Latents not reproduced exactly (only with allow_inexact)."""
    verification: Verification
    """Source vs the written result, re-read from disk."""


@dataclass(frozen=True)
class Converted:
    weights: AnyWeights
    clamped: list[int]
    issues: list[Inexactness]


def convert_weights(
    src: AnyWeights,
    to: str,
    apply_b_dec_to_input: bool | None = None,
    allow_inexact: bool = False,
) -> Converted:
    """The in-memory conversion: ``src`` as the weights of target ``to``, with unit-norm
    decoder rows (the same function; what Gemma Scope releases and SAEBench expect)."""
    if to not in TARGETS:
        raise ConversionError(f"unknown target {to!r}; choose one of {sorted(TARGETS)}")
    if to == "gemma-scope":
        apply_b_dec_to_input = False  # Gemma Scope never subtracts b_dec
    if isinstance(src, GatedWeights) and to in ("gated", "sae-lens"):
        flag = src.apply_b_dec_to_input if apply_b_dec_to_input is None else apply_b_dec_to_input
        return Converted(gated_with_b_dec_applied(src, flag).with_unit_decoder(), [], [])
    clamped: list[int] = []
    issues: list[Inexactness] = []
    if isinstance(src, GatedWeights):
        imported = gated_to_jumprelu(src, allow_inexact)
        jr, clamped, issues = imported.weights, imported.clamped, imported.issues
    else:
        jr = src
    jr = jr.with_unit_decoder()
    if to == "gated":
        return Converted(jumprelu_to_gated(jr, apply_b_dec_to_input), clamped, issues)
    if apply_b_dec_to_input is not None:
        jr = jr.with_b_dec_applied(apply_b_dec_to_input)
    return Converted(jr, clamped, issues)


def _check_exact(src: AnyWeights, converted: Converted, n_inputs: int, allow_inexact: bool,
                 where: str) -> Verification:  # fmt: skip
    dst = converted.weights
    result = verify(src, dst, n_inputs=n_inputs)
    tol = max(REL_TOL.get(src.W_enc.dtype, 1e-5), REL_TOL.get(dst.W_enc.dtype, 1e-5))
    if not result.exact(tol):
        worst = result.per_latent_max_abs.argsort(descending=True)[:10].tolist()
        issue = Inexactness(worst, f"{where}: outputs differ beyond rounding ({result.summary()})")
        if not allow_inexact:
            raise InexactConversionError(
                f"the conversion is not exact: {result.summary()}; worst latents {worst}. "
                "Nothing was written; pass allow_inexact=True (--allow-inexact) to write it anyway",
                [*converted.issues, issue],
            )
        converted.issues.append(issue)
    return result


def convert(
    src: Path | str,
    dst: Path | str,
    to: str,
    *,
    allow_inexact: bool = False,
    overwrite: bool = False,
    apply_b_dec_to_input: bool | None = None,
    release_path: str | None = None,
    hook_name: str | None = None,
    d_in: int | None = None,
    n_inputs: int = 512,
) -> ConversionResult:
    """Convert the SAE at ``src`` into format ``to`` at ``dst``, exactly or not at all.

    Refuses (``InexactConversionError``, nothing written) when the result would compute a
    different function, unless ``allow_inexact``; then ``ConversionResult.issues`` says which
    latents and ``verification.per_latent_max_abs`` by how much.
    """
    src, dst = Path(src), Path(dst)
    if to not in TARGETS:
        raise ConversionError(f"unknown target {to!r}; choose one of {sorted(TARGETS)}")
    check_destination(dst, overwrite)
    source_format = detect_format(src)
    weights = load(src, release_path, hook_name, d_in)
    converted = convert_weights(weights, to, apply_b_dec_to_input, allow_inexact)
    _check_exact(weights, converted, n_inputs, allow_inexact, "in memory")
    target = TARGETS[to]
    if to == "gemma-scope" and dst.suffix not in (".npz", ".safetensors"):
        raise ConversionError(
            f"{dst}: a Gemma Scope file is named .npz or .safetensors (Gemma Scope 2); "
            f"give e.g. {dst.with_name(dst.name + '.npz')}"
        )
    checked: list[Verification] = []

    def write_and_read_back(tmp: Path) -> None:
        # The written file is read back and verified before it replaces anything at dst.
        target.write(converted.weights, tmp)
        written = load(tmp, release_path or str(dst.resolve()), hook_name)
        checked.append(_check_exact(weights, Converted(written, [], []), n_inputs,
                                    allow_inexact, "read back"))  # fmt: skip

    write = write_file_atomic if target.is_file else write_dir_atomic
    write(dst, write_and_read_back, overwrite)
    verification = checked[0]
    for issue in converted.issues:
        logger.warning("inexact latents %s: %s", issue.latents[:20], issue.reason)
    return ConversionResult(source_format, to, converted.clamped, converted.issues, verification)
