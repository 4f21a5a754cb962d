"""
Execute every tutorial notebook at smoke-test size and check that the
stored notebooks carry no outputs.

Each notebook runs in a fresh kernel started from the interpreter that runs
the tests, not from whatever ``python`` an installed kernel spec names. The
environment variable ``CI`` is set, which switches the notebooks to small
sizes, and the working directory is a temporary folder.
"""

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
KERNEL_NAME = "pyro-diffusion-tests"

#: Seconds one cell may run at smoke-test size before the test fails.
CELL_TIMEOUT = 300


def _ids(paths):
    return [path.stem for path in paths]


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory):
    """A kernel spec manager whose only kernel runs ``sys.executable``."""
    kernels = tmp_path_factory.mktemp("kernels")
    spec_dir = kernels / KERNEL_NAME
    spec_dir.mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)


def test_tutorials_found():
    assert len(TUTORIALS) >= 5


@pytest.mark.parametrize("path", TUTORIALS, ids=_ids(TUTORIALS))
def test_tutorial_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells, f"{path.name} has no code cells"
    for index, cell in enumerate(code_cells):
        assert cell.outputs == [], f"{path.name}: code cell {index} has stored outputs; strip them (nbstripout)"
        assert cell.execution_count is None, f"{path.name}: code cell {index} has an execution count"


@pytest.mark.parametrize("path", TUTORIALS, ids=_ids(TUTORIALS))
def test_tutorial_markdown_has_no_comment_markers(path):
    # A lone "#" or "# #" left from a script conversion renders as an empty or doubled heading.
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            assert line.strip() != "#", f"{path.name}: markdown cell {index} has an empty heading"
            assert not line.startswith("# #"), f"{path.name}: markdown cell {index}: {line!r}"


@pytest.mark.parametrize("path", TUTORIALS, ids=_ids(TUTORIALS))
def test_tutorial_has_smoke_switch(path):
    source = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")
    assert 'SMOKE = bool(os.environ.get("CI"))' in source
    assert "torch.set_num_threads(1)" in source


def test_readme_links_every_tutorial():
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\((tutorials/[^)]+\.ipynb)\)", readme))
    for path in TUTORIALS:
        assert f"tutorials/{path.name}" in linked, f"README.md does not link {path.name}"


@pytest.mark.parametrize("path", TUTORIALS, ids=_ids(TUTORIALS))
def test_tutorial_executes(path, kernel_specs, tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "1")
    notebook = nbformat.read(path, as_version=4)
    manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_specs)
    assert manager.kernel_spec.argv[0] == sys.executable
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=CELL_TIMEOUT,
        allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    finally:
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells), f"{path.name}: a code cell did not run"
    figures = sum(
        "image/png" in output.get("data", {}) for cell in code_cells for output in cell.outputs
    )
    assert figures > 0, f"{path.name} drew no figure"
    assert list(tmp_path.iterdir()) == [], f"{path.name} wrote files into its working directory"
