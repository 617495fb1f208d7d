"""The tutorials: generated from tutorials/build_notebooks.py, committed without outputs, and each
runs top to bottom offline on the embedded model (executed here with nbclient, as CI does)."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

TUTORIALS = Path(__file__).parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def _builder():
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", TUTORIALS / "build_notebooks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_tutorial_is_committed_as_generated() -> None:
    builder = _builder()
    assert [p.name for p in NOTEBOOKS] == sorted(builder.TUTORIALS)
    for path in NOTEBOOKS:
        title, cells = builder.TUTORIALS[path.name]
        expected = nbformat.writes(builder.notebook(path.name, title, cells))
        assert path.read_text().rstrip("\n") == expected.rstrip("\n"), (
            f"{path.name} differs from tutorials/build_notebooks.py: run "
            "`python tutorials/build_notebooks.py`"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_has_badge_install_cell_and_no_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert f"tutorials/{path.name})" in nb.cells[0].source  # the Colab badge points at itself
    assert "pip" in nb.cells[1].source and "find_spec" in nb.cells[1].source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_runs_top_to_bottom(path: Path, tmp_path: Path) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=1200,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError naming the cell on any failure
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert errors == []
