"""Exported models give the logits of `model.apply` on the normalised input,
and run without this code (a bare Python with jax, TensorFlow or
onnxruntime, in a subprocess)."""

import importlib.util
import json
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

from configs import unet_synthetic
from medseg_jax import checkpointing
from medseg_jax import export
from medseg_jax import models
from medseg_jax import run_config
from medseg_jax import train
from medseg_jax.data import registry
from medseg_jax.data import transforms
from medseg_jax.evaluation import case_predictor

PATCH = (16, 16)
NORMALIZE = {
  "zscore": dict(op="normalize", mode="zscore"),
  "fixed": dict(
    op="normalize",
    mode="fixed",
    low=[0.1],
    high=[0.9],
    mean=[0.4],
    std=[0.2],
  ),
}


def _make_run(workdir: pathlib.Path, normalize: dict) -> None:
  """A run dir with random weights: config.json and one checkpoint."""
  config = unet_synthetic.get_config("runlocal")
  config.model.features = (4, 8, 16)
  config.data.patch_size = PATCH
  config.data.train_transforms = [normalize, dict(op="random_crop_or_pad")]
  spec = registry.get_dataset_spec(config.dataset)
  model = models.from_config(config, spec)
  variables = model.init(
    jax.random.key(1), np.zeros((1, *PATCH, 1), np.float32), train=False
  )
  state = train.TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    tx=optax.sgd(0.1),
    batch_stats=variables.get("batch_stats", {}),
  )
  run_config.save(config, workdir)
  manager = checkpointing.create_manager(
    workdir / "checkpoints", async_save=False
  )
  checkpointing.save(manager, 1, state, {}, {checkpointing.BEST_METRIC: 0.5})
  manager.wait_until_finished()


@pytest.fixture(scope="module", params=sorted(NORMALIZE))
def run(request, tmp_path_factory):
  workdir = tmp_path_factory.mktemp(f"run_{request.param}")
  _make_run(workdir, NORMALIZE[request.param])
  trained = case_predictor.load_trained(str(workdir))
  image = np.random.default_rng(0).uniform(0, 1, (2, *PATCH, 1))
  image = image.astype(np.float32)
  # The reference: the input pipeline's numpy normalisation, per image,
  # then the model.
  normalize = transforms.build([NORMALIZE[request.param]])[0]
  normalised = np.stack([normalize.map(dict(image=x))["image"] for x in image])
  expected = np.asarray(
    trained.model.apply(trained.variables, normalised, train=False)
  )
  return workdir, image, expected, request.param


def _run_bare(tmp_path, code: str) -> np.ndarray:
  """Runs `code` in a fresh interpreter that cannot import medseg_jax; the
  code saves `out` to out.npy."""
  script = tmp_path / "bare.py"
  script.write_text(textwrap.dedent(code))
  subprocess.run(
    [sys.executable, "-I", str(script)],
    cwd=tmp_path,
    check=True,
    timeout=300,
    env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"},
  )
  return np.load(tmp_path / "out.npy")


@pytest.mark.long
def test_stablehlo_gives_the_logits_of_model_apply(run, tmp_path):
  workdir, image, expected, _ = run
  meta = export.export(str(workdir), "stablehlo", str(tmp_path / "x"), batch=2)
  assert meta["input"]["shape"] == [2, *PATCH, 1]
  assert meta["class_names"] == list(
    registry.get_dataset_spec("synthetic_phantoms/2d").class_names
  )
  np.save(tmp_path / "image.npy", image)
  out = _run_bare(
    tmp_path,
    f"""
    import numpy as np, jax, sys
    assert "medseg_jax" not in sys.modules
    blob = open("{tmp_path}/x/{export.STABLEHLO_FILE}", "rb").read()
    fn = jax.export.deserialize(bytearray(blob))
    np.save("out.npy", np.asarray(fn.call(np.load("image.npy"))))
  """,
  )
  np.testing.assert_allclose(out, expected, atol=1e-4)
  on_disk = json.loads((tmp_path / "x" / export.METADATA).read_text())
  assert on_disk["normalization"] == meta["normalization"]


@pytest.mark.long
def test_symbolic_stablehlo_takes_other_sizes(run, tmp_path):
  workdir, image, _, _ = run
  meta = export.export(
    str(workdir), "stablehlo", str(tmp_path / "x"), symbolic=True
  )
  assert meta["input"]["shape"] == ["b", "4*h", "4*w", 1]
  blob = (tmp_path / "x" / export.STABLEHLO_FILE).read_bytes()
  fn = jax.export.deserialize(bytearray(blob))
  trained = case_predictor.load_trained(str(workdir))
  bigger = np.tile(image[:1], (1, 2, 3, 1))  # 32 x 48, batch 1.
  expected = export.inference_fn(trained)(bigger)
  np.testing.assert_allclose(fn.call(bigger), expected, atol=1e-4)


@pytest.mark.slow
@pytest.mark.long
def test_saved_model_gives_the_logits_of_model_apply(run, tmp_path):
  workdir, image, expected, normalization = run
  if normalization != "fixed":
    pytest.skip("TensorFlow is slow to start; the fixed clip covers more.")
  export.export(str(workdir), "saved_model", str(tmp_path / "x"), symbolic=True)
  np.save(tmp_path / "image.npy", image)
  out = _run_bare(
    tmp_path,
    f"""
    import numpy as np, sys
    import tensorflow as tf
    model = tf.saved_model.load("{tmp_path}/x")
    out = model.signatures["serving_default"](
      image=tf.constant(np.load("image.npy")))
    np.save("out.npy", list(out.values())[0].numpy())
    assert "medseg_jax" not in sys.modules
  """,
  )
  np.testing.assert_allclose(out, expected, atol=1e-4)


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.skipif(
  importlib.util.find_spec("jax2onnx") is None
  or importlib.util.find_spec("onnxruntime") is None,
  reason="ONNX export needs jax2onnx and onnxruntime (pip install jax2onnx "
  "onnx onnxruntime)",
)
def test_onnx_gives_the_logits_of_model_apply(run, tmp_path):
  workdir, image, expected, normalization = run
  if normalization != "fixed":
    pytest.skip("jax2onnx is slow to convert; the fixed clip covers more.")
  export.export(str(workdir), "onnx", str(tmp_path / "x"), batch=2)
  np.save(tmp_path / "image.npy", image)
  out = _run_bare(
    tmp_path,
    f"""
    import numpy as np, sys
    import onnxruntime
    session = onnxruntime.InferenceSession("{tmp_path}/x/{export.ONNX_FILE}")
    name = session.get_inputs()[0].name
    (out,) = session.run(None, {{name: np.load("image.npy")}})
    np.save("out.npy", out)
    assert "medseg_jax" not in sys.modules
  """,
  )
  np.testing.assert_allclose(out, expected, atol=1e-4)


@pytest.mark.long
def test_unknown_format_lists_the_valid_ones(run, tmp_path):
  workdir, _, _, _ = run
  with pytest.raises(ValueError, match="stablehlo, saved_model, onnx"):
    export.export(str(workdir), "torchscript", str(tmp_path))
