"""Tests for `python -m medseg_jax.predict`."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from configs import unet_folder
from medseg_jax import predict
from medseg_jax import train
from medseg_jax.data import medical_io
from medseg_jax.data.from_folder import dummy_data

# Enough steps for the tiny U-Net to find the dummy data's bright box (per
# case Dice 0.81-1.0 with these seeds; 0.1-0.3 after 4 steps), so that a
# mask's content, and its orientation, can be checked against the labels.
STEPS = 100

# Each test reads a run trained end to end by a module fixture.
pytestmark = pytest.mark.slow


def _trained(tmp_path_factory, fmt, patch):
  root = tmp_path_factory.mktemp(fmt)
  folder = dummy_data.make_dummy_data(root / "raw", fmt=fmt, num_cases=4)
  config = unet_folder.get_config(f"folder={folder},patch={patch},runlocal")
  config.data_dir = str(root / "tfds")
  config.num_train_steps = STEPS
  config.eval_every_steps = STEPS
  config.checkpoint_every_steps = STEPS
  config.eval.surface_metrics = False
  train.train_and_evaluate(config, str(root / "run"))
  return config, root / "run", folder


@pytest.fixture(scope="module")
def nifti_run(tmp_path_factory):
  return _trained(tmp_path_factory, "nifti", 8)


@pytest.fixture(scope="module")
def png_run(tmp_path_factory):
  return _trained(tmp_path_factory, "png", 16)


def _dice(mask, label) -> float:
  """Foreground Dice of two binary masks, in numpy."""
  mask, label = np.asarray(mask) > 0, np.asarray(label) > 0
  return 2 * np.sum(mask & label) / (np.sum(mask) + np.sum(label))


def _assert_match_labels(masks, labels):
  """Each mask finds its case's labelled box, and in the labels' own
  orientation: flipping the masks along any axis lowers their mean Dice."""
  for mask, label in zip(masks, labels, strict=True):
    assert mask.shape == label.shape
    assert set(np.unique(mask).tolist()) <= {0, 1}
    assert _dice(mask, label) > 0.7
  pairs = list(zip(masks, labels, strict=True))
  mean = np.mean([_dice(m, x) for m, x in pairs])
  for axis in range(masks[0].ndim):
    flipped = np.mean([_dice(np.flip(m, axis), x) for m, x in pairs])
    assert flipped < mean - 0.1, axis


def test_nifti_masks_match_the_labels_in_any_orientation(nifti_run, tmp_path):
  config, workdir, folder = nifti_run
  sources, labels, flipped_sources = [], [], []
  for path in sorted((folder / "labels").glob("*.nii.gz")):
    case = path.name.removesuffix(".nii.gz")
    channels = [
      nib.load(folder / "images" / f"{case}_{c:04d}.nii.gz") for c in (0, 1)
    ]
    data = np.stack([np.asarray(c.dataobj) for c in channels], axis=-1)
    affine = channels[0].affine
    labels.append(np.asarray(nib.load(path).dataobj))
    # The case as one 4-D file, and the same voxels stored with axes 0 and
    # 1 reversed under an affine that keeps every voxel's world position
    # (LAS on disk becomes RPS).
    sources.append(tmp_path / f"{case}.nii.gz")
    medical_io.write_nifti(sources[-1], data, affine)
    reverse = np.diag([-1.0, -1.0, 1.0, 1.0])
    reverse[:2, 3] = np.asarray(data.shape[:2]) - 1
    flipped_sources.append(tmp_path / f"{case}_rps.nii.gz")
    medical_io.write_nifti(
      flipped_sources[-1], data[::-1, ::-1], affine @ reverse
    )
  assert nib.aff2axcodes(affine @ reverse) == ("R", "P", "S")
  written, failed = predict.predict_all(
    str(workdir),
    [str(p) for p in sources + flipped_sources],
    str(tmp_path / "out"),
    "latest",
  )
  assert not failed
  masks = [np.asarray(nib.load(p).dataobj) for p in written]
  masks, flipped = masks[: len(labels)], masks[len(labels) :]
  _assert_match_labels(masks, labels)
  for mask, other in zip(masks, flipped, strict=True):
    # The same world, so the same mask, stored in the input's own order.
    np.testing.assert_array_equal(other, mask[::-1, ::-1])


def test_nifti_round_trip_keeps_shape_affine_and_orientation(
  nifti_run, tmp_path
):
  config, workdir, folder = nifti_run
  # A 2-channel case as one 4-D NIfTI in another orientation (LPS-like)
  # and shape than the training data.
  rng = np.random.default_rng(0)
  data = rng.normal(100, 20, size=(9, 11, 6, 2)).astype(np.float32)
  affine = np.array(
    [[-1.5, 0, 0, 20], [0, -1.0, 0, 14], [0, 0, 2.0, -5], [0, 0, 0, 1]]
  )
  source = tmp_path / "new_case.nii.gz"
  medical_io.write_nifti(source, data, affine)
  written, failed = predict.predict_all(
    str(workdir), [str(source)], str(tmp_path / "out"), "latest"
  )
  assert not failed
  assert written == [tmp_path / "out" / "new_case_seg.nii.gz"]
  mask = nib.load(written[0])
  assert mask.shape == (9, 11, 6)
  np.testing.assert_allclose(mask.affine, affine)
  assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(affine)
  values = np.unique(np.asarray(mask.dataobj))
  assert set(values.tolist()) <= {0, 1}


def test_png_in_png_out_and_bad_inputs_are_skipped(png_run, tmp_path):
  config, workdir, folder = png_run
  good = sorted((folder / "images").glob("*.png"))[0]
  broken = tmp_path / "broken.png"
  broken.write_bytes(good.read_bytes()[:40])
  gray = tmp_path / "gray.png"
  Image.fromarray(np.zeros((12, 10), np.uint8)).save(gray)
  written, failed = predict.predict_all(
    str(workdir),
    [str(broken), str(good), str(gray), str(tmp_path / "absent.nii.gz")],
    str(tmp_path / "out"),
    "latest",
  )
  assert [p.name for p in written] == [f"{good.stem}_seg.png"]
  mask = np.asarray(Image.open(written[0]))
  assert mask.shape == np.asarray(Image.open(good)).shape[:2]
  _assert_match_labels(
    [mask], [np.asarray(Image.open(folder / "labels" / good.name))]
  )
  reasons = dict(failed)
  assert "broken.png" in reasons[str(broken)]
  assert "channel" in reasons[str(gray)]
  assert "no such file" in reasons[str(tmp_path / "absent.nii.gz")]


@pytest.mark.slow
@pytest.mark.long
def test_command_line_exit_code_says_some_failed(png_run, tmp_path, repo_root):
  config, workdir, folder = png_run
  good = sorted((folder / "images").glob("*.png"))[0]
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "medseg_jax.predict",
      f"--workdir={workdir}",
      "--checkpoint=latest",
      f"--output={tmp_path}",
      f"--input={good}",
      f"--input={tmp_path / 'absent.png'}",
    ],
    cwd=repo_root,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert result.returncode == 1, result.stderr[-2000:]
  assert "1 mask(s) written" in result.stdout and "1 failed" in result.stdout
  # The program's mask is the in-process one, pixel for pixel.
  (expected,), _ = predict.predict_all(
    str(workdir), [str(good)], str(tmp_path / "in_process"), "latest"
  )
  np.testing.assert_array_equal(
    np.asarray(Image.open(tmp_path / f"{good.stem}_seg.png")),
    np.asarray(Image.open(expected)),
  )


def test_a_config_of_another_model_is_refused_with_its_fields(
  png_run, tmp_path
):
  config, workdir, folder = png_run
  good = sorted((folder / "images").glob("*.png"))[0]
  wider = config.copy_and_resolve_references()
  wider.model.features = (8, 16, 32)
  with pytest.raises(ValueError, match=r"model\.features: run \(4, 8\)"):
    predict.predict_all(
      str(workdir), [str(good)], str(tmp_path / "out"), config=wider
    )
  assert not (tmp_path / "out").exists() or not any(
    (tmp_path / "out").iterdir()
  )
