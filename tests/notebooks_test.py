"""The notebooks: tidy (badge, set-up cell, no outputs) and runnable.

The executions are marked `notebook` and run by `make test-notebooks`
(each notebook top to bottom in FAST mode, in a kernel of this Python,
from the repository root), not by `make test`. A cell that raises fails
the test with the cell and its traceback.
"""

import importlib.util
import os
import pathlib
import sys

import nbformat
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"
# Seconds one cell may take before the test fails: FAST cells take at most
# a few minutes on 2 CPU cores (03's four training runs), more when the
# cores are shared.
CELL_TIMEOUT = 1200


def _colab_module():
  spec = importlib.util.spec_from_file_location(
    "notebooks_colab", NOTEBOOKS / "colab.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


colab = _colab_module()
NAMES = [path.name for path in colab.notebooks()]
# Notebooks that need a subpackage which may not be in this checkout yet
# (it is built on another branch); they skip, naming it, until it is.
NEEDS = {
  "04_explainability.ipynb": "medseg_jax.explain",
  "07_robustness.ipynb": "medseg_jax.corruptions",
}


def execute(
  path: pathlib.Path, workdir: pathlib.Path, data_dir: pathlib.Path
) -> None:
  """Runs a notebook top to bottom in FAST mode; raises on a cell error.

  The kernel is this interpreter's ipykernel, started in the repository
  root; its outputs go under `workdir`. The datasets go to
  `MEDSEG_DATA_DIR` if set (`make` sets it), else to `data_dir`.
  """
  from nbclient import NotebookClient  # noqa: PLC0415

  notebook = nbformat.read(path, as_version=4)
  env = {
    "MEDSEG_NOTEBOOK_FAST": "1",
    "MEDSEG_NOTEBOOK_WORKDIR": str(workdir),
    "MEDSEG_DATA_DIR": os.environ.get("MEDSEG_DATA_DIR", str(data_dir)),
  }
  saved = {key: os.environ.get(key) for key in env}
  os.environ.update(env)  # The kernel inherits this process's environment.
  try:
    client = NotebookClient(
      notebook,
      timeout=CELL_TIMEOUT,
      kernel_name="python3",
      resources={"metadata": {"path": str(REPO_ROOT)}},
    )
    client.execute()
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value


@pytest.fixture(scope="module")
def notebook_data_dir(tmp_path_factory) -> pathlib.Path:
  """One dataset directory for all notebooks (each dataset built once)."""
  return tmp_path_factory.mktemp("tensorflow_datasets")


def test_the_notebook_set():
  assert NAMES == [
    "01_quickstart.ipynb",
    "02_isbi2012_unet.ipynb",
    "03_compare_models.ipynb",
    "04_explainability.ipynb",
    "05_volumes_3d.ipynb",
    "06_your_own_data.ipynb",
    "07_robustness.ipynb",
  ]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_tidy(name):
  """Badge and set-up cell as notebooks/colab.py writes them, no outputs."""
  path = NOTEBOOKS / name
  notebook = nbformat.read(path, as_version=4)
  first = notebook.cells[0].source.split("\n")[0]
  assert first == colab.badge(name)
  assert f"/github/{colab.GITHUB_REPO}/blob/" in first
  assert first.endswith(f"/notebooks/{name})")
  assert notebook.cells[1].source == colab.setup_source()
  for index, cell in enumerate(notebook.cells):
    if cell.cell_type == "code":
      assert not cell.outputs, f"{name} cell {index} has outputs"
      assert cell.execution_count is None, f"{name} cell {index}"
  # Defines nothing the package needs: no classes, and the FAST switch.
  code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
  assert "\nclass " not in code
  assert 'os.environ.get("MEDSEG_NOTEBOOK_FAST", "0") == "1"' in code
  assert nbformat.writes(colab.tidy(notebook, name)) + "\n" == path.read_text()


def test_setup_cell_installs_nothing_in_a_checkout(tmp_path, monkeypatch):
  """Run from notebooks/, the set-up cell finds the checkout and moves to
  its root without cloning or installing (a call to either would fail)."""
  import subprocess  # noqa: PLC0415

  def refuse(*args, **kwargs):
    raise AssertionError(f"set-up cell ran {args}")

  monkeypatch.setattr(subprocess, "check_call", refuse)
  monkeypatch.chdir(NOTEBOOKS)
  monkeypatch.setattr(sys, "path", list(sys.path))
  scope = {}
  exec(colab.setup_source(), scope)  # noqa: S102
  assert pathlib.Path.cwd() == REPO_ROOT
  assert scope["root"] == REPO_ROOT


def test_setup_cell_clones_and_installs_elsewhere(tmp_path, monkeypatch):
  """Outside a checkout it clones GITHUB_REPO and pip-installs the clone
  (plus GPU JAX when nvidia-smi exists), when medseg_jax is not importable.
  """
  import importlib.util as util  # noqa: PLC0415
  import shutil  # noqa: PLC0415
  import subprocess  # noqa: PLC0415

  calls = []

  def record(command, **kwargs):
    calls.append(list(command))
    if command[:2] == ["git", "clone"]:
      pathlib.Path(command[-1]).mkdir()

  monkeypatch.setattr(subprocess, "check_call", record)
  monkeypatch.setattr(util, "find_spec", lambda name: None)
  monkeypatch.setattr(
    shutil, "which", lambda cmd: "/usr/bin/nvidia-smi" if cmd else None
  )
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", list(sys.path))
  exec(colab.setup_source(), {})  # noqa: S102
  clone = tmp_path / "medseg_jax_repo"
  assert calls[0][:2] == ["git", "clone"]
  assert f"https://github.com/{colab.GITHUB_REPO}.git" in calls[0]
  assert calls[1][-2:] == [str(clone), "jax[cuda12]==0.12.1"]
  assert calls[1][:4] == [sys.executable, "-m", "pip", "install"]
  assert pathlib.Path.cwd() == clone


@pytest.mark.notebook
def test_a_failing_cell_fails_the_run(tmp_path):
  """The runner the notebook tests use reports a cell's exception."""
  from nbclient.exceptions import CellExecutionError  # noqa: PLC0415

  notebook = nbformat.v4.new_notebook(
    cells=[
      nbformat.v4.new_code_cell("import medseg_jax"),
      nbformat.v4.new_code_cell("raise ValueError('broken cell')"),
    ]
  )
  path = tmp_path / "broken.ipynb"
  nbformat.write(notebook, path)
  with pytest.raises(CellExecutionError, match="broken cell"):
    execute(path, tmp_path / "run", tmp_path / "tfds")


@pytest.mark.notebook
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path, notebook_data_dir):
  needs = NEEDS.get(name)
  if needs and importlib.util.find_spec(needs) is None:
    pytest.skip(f"{name} needs {needs}, which this checkout lacks")
  execute(NOTEBOOKS / name, tmp_path, notebook_data_dir)
