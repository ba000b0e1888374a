"""Tests for `python -m medseg_jax.explain` on a hand-made run (a saved
config and one checkpoint of an untrained tiny U-Net; no training)."""

import jax
import numpy as np
import pytest
from PIL import Image

from configs import unet_synthetic
from medseg_jax import checkpointing
from medseg_jax import explain
from medseg_jax import models
from medseg_jax import run_config
from medseg_jax.data import registry
from medseg_jax.evaluation import case_predictor
from medseg_jax.explain import __main__ as cli


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("explain_run")
  config = unet_synthetic.get_config("runlocal")
  config.model.features = (4, 8)
  config.data.patch_size = (32, 32)
  workdir = root / "run"
  workdir.mkdir()
  run_config.save(config, workdir)
  spec = registry.get_dataset_spec(config.dataset)
  model = models.from_config(config, spec)
  x = np.zeros((1, 32, 32, spec.num_channels), np.float32)
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(
    jax.random.key(0), x
  )
  manager = checkpointing.create_manager(workdir / "checkpoints")
  checkpointing.save(
    manager,
    1,
    dict(variables),
    None,
    {checkpointing.BEST_METRIC: 0.5},
  )
  manager.wait_until_finished()
  # A 40x48 grey image: smaller than no axis of the patch, not a multiple.
  rng = np.random.default_rng(0)
  image = (rng.random((40, 24)) * 255).astype(np.uint8)
  path = root / "case.png"
  Image.fromarray(image).save(path)
  return workdir, path, root


@pytest.mark.slow
def test_cli_writes_maps_on_the_inputs_grid(run):
  workdir, path, root = run
  out = root / "maps"
  written, failed = cli.explain_all(
    str(workdir),
    [str(path)],
    str(out),
    methods=["saliency", "occlusion"],
    region="voxel",
    voxel=(10, 5),
    class_name="organ",
    options={"window": 8, "stride": 8},
  )
  assert not failed
  names = sorted(p.name for p in written)
  assert names == [
    "case_occlusion.npy",
    "case_occlusion.png",
    "case_saliency.npy",
    "case_saliency.png",
  ]
  sal = np.load(out / "case_saliency.npy")
  assert sal.shape == (40, 24)
  # The same map from the library on the predictor's prepared, padded
  # image (the CLI must not explain another input or another voxel).
  explainer = cli.Explainer(
    str(workdir), methods=["saliency"], region="voxel", voxel=(10, 5)
  )
  _, _, image = explainer.predictor.prepare(path)
  pads = case_predictor.center_pads((40, 24), (40, 32))
  padded = np.pad(image, [*pads, (0, 0)])
  voxel = (10 + pads[0][0], 5 + pads[1][0])
  target = explain.Target(class_index=1, region="voxel", voxel=voxel)
  want = explain.make_explainer(explainer.model, "saliency", target)(
    explainer.variables, padded[None]
  )[0]
  want = np.asarray(want)[:, pads[1][0] : pads[1][0] + 24]
  np.testing.assert_allclose(sal, want, rtol=1e-5, atol=1e-7)
  assert Image.open(out / "case_saliency.png").size[0] > 24


def test_cli_errors_list_valid_names(run):
  workdir, path, root = run
  with pytest.raises(ValueError, match="valid classes: 0=background"):
    cli.Explainer(str(workdir), methods=["saliency"], class_name="tumour")
  with pytest.raises(ValueError, match="valid methods"):
    cli.Explainer(str(workdir), methods=["gradcan"])
  with pytest.raises(ValueError, match="valid options: .*'window'"):
    cli.Explainer(str(workdir), methods=["occlusion"], options={"size": 3})
  assert cli.parse_options(["window=16,8", "fill=mean", "samples=5"]) == {
    "window": (16, 8),
    "fill": "mean",
    "samples": 5,
  }
