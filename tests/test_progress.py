import os
import subprocess
import sys

import pytest

from sae_lens_jumprelu import progress
from sae_lens_jumprelu.progress import progress_bar

# Loads progress.py alone: importing the package (SAELens, TransformerLens) takes seconds.
SHOWN = (
    "import importlib.util as u, sys; spec = u.spec_from_file_location('p', sys.argv[1]); "
    "m = u.module_from_spec(spec); spec.loader.exec_module(m); print(m.progress_bar('w').disable)"
)


def bar_disabled_in_fresh_process(**env: str) -> bool:
    # tqdm reads TQDM_* variables once, at import, so only a fresh process sees a change.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    result = subprocess.run(
        [sys.executable, "-c", SHOWN, progress.__file__],
        env={**clean, **env},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return {"True": True, "False": False}[result.stdout.strip()]


@pytest.mark.parametrize("desc, show", [(None, True), ("work", False)])
def test_bar_is_hidden_when_unlabelled_or_not_shown(desc: str | None, show: bool) -> None:
    assert progress_bar(desc, show, iterable=range(3)).disable


def test_tqdm_disable_in_the_environment_is_honoured() -> None:
    # tqdm takes TQDM_* variables as defaults only: an explicit disable=False used to win.
    assert not bar_disabled_in_fresh_process()
    assert bar_disabled_in_fresh_process(TQDM_DISABLE="1")
