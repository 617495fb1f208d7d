"""``sae-jumprelu convert SRC DST --to FORMAT``: ``convert.convert`` from the command line."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sae_lens_jumprelu.convert import ConversionResult, convert


@dataclass(frozen=True)
class ConvertJob:
    """Everything ``sae-jumprelu convert`` can be told."""

    src: Path = Path()
    """The SAE to convert: a SAELens directory, a dictionary_learning directory or a params file
    (its format is detected from its files)."""
    dst: Path = Path()
    """Output file (gemma-scope) or directory."""
    to: str = ""
    """Target format."""
    allow_inexact: bool = False
    """Write even if the result computes a different function, and report the latents."""
    overwrite: bool = False
    """Replace an existing ``dst``."""
    apply_b_dec_to_input: Literal["true", "false"] | None = None
    """Subtract b_dec from inputs in the result; None: as the source (gemma-scope: false)."""
    release_path: str | None = None
    """Gemma Scope release path to infer the hook from, e.g.
    gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71; None: SRC's own path."""
    hook_name: str | None = None
    """Hook point to record in the result."""
    d_in: int | None = None
    """Check the SAE's input width against this."""
    n_inputs: int = 512
    """Random inputs the result is verified on."""

    def __post_init__(self) -> None:
        if self.n_inputs < 2:
            raise ValueError(f"--n-inputs must be at least 2, got {self.n_inputs}")


def run_convert(job: ConvertJob) -> ConversionResult:
    apply = None if job.apply_b_dec_to_input is None else job.apply_b_dec_to_input == "true"
    return convert(
        job.src,
        job.dst,
        job.to,
        allow_inexact=job.allow_inexact,
        overwrite=job.overwrite,
        apply_b_dec_to_input=apply,
        release_path=job.release_path,
        hook_name=job.hook_name,
        d_in=job.d_in,
        n_inputs=job.n_inputs,
    )
