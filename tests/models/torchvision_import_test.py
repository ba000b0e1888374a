"""Tests for medseg_jax.models.torchvision_import.

The state dicts here are fakes with torchvision's names and shapes, written
out from torchvision's construction rule (below) independently of the
importer's own name mapping; no torch is needed. The numeric check against
torchvision reads stored reference activations (testdata/, with the script
that wrote them and its environment), so it runs without torch too.
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medseg_jax.models import deeplab
from medseg_jax.models import resnet
from medseg_jax.models import torchvision_import as tvi
from tests.models import model_testing


def fake_state_dict(
  depth: int, width: float = 1.0, in_channels: int = 3, seed=0
):
  """Random arrays under torchvision ResNet state-dict keys.

  torchvision.models.resnet: `conv1` 7x7 to 64 (no bias) and `bn1`; four
  `layer{s}` of blocks `{b}` with `planes` = 64, 128, 256, 512; basic
  blocks have conv1/bn1, conv2/bn2 (3x3), bottlenecks conv1 (1x1), conv2
  (3x3), conv3 (1x1 to 4 * planes) with bn1..bn3; the first block of a
  stage has `downsample.0` (1x1 conv) and `downsample.1` (BN) when the
  stride or the channel count changes; `fc` maps to 1000 classes. Conv
  weights are `[out, in, kh, kw]`; every BN has weight, bias, running_mean,
  running_var and num_batches_tracked.
  """
  rng = np.random.default_rng(seed)
  basic = depth in (18, 34)
  blocks = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
  }[depth]
  expansion = 1 if basic else 4
  base = round(64 * width)
  state = {}

  def conv(name, out, inp, k):
    state[f"{name}.weight"] = rng.standard_normal((out, inp, k, k), np.float32)

  def bn(name, c):
    state[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    state[f"{name}.bias"] = rng.standard_normal(c, np.float32)
    state[f"{name}.running_mean"] = rng.standard_normal(c, np.float32)
    state[f"{name}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    state[f"{name}.num_batches_tracked"] = np.array(100, np.int64)

  conv("conv1", base, in_channels, 7)
  bn("bn1", base)
  inplanes = base
  for stage, count in enumerate(blocks):
    planes = base * 2**stage
    for b in range(count):
      p = f"layer{stage + 1}.{b}"
      if basic:
        conv(f"{p}.conv1", planes, inplanes, 3)
        bn(f"{p}.bn1", planes)
        conv(f"{p}.conv2", planes, planes, 3)
        bn(f"{p}.bn2", planes)
      else:
        conv(f"{p}.conv1", planes, inplanes, 1)
        bn(f"{p}.bn1", planes)
        conv(f"{p}.conv2", planes, planes, 3)
        bn(f"{p}.bn2", planes)
        conv(f"{p}.conv3", planes * expansion, planes, 1)
        bn(f"{p}.bn3", planes * expansion)
      if b == 0 and (stage > 0 or inplanes != planes * expansion):
        conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
        bn(f"{p}.downsample.1", planes * expansion)
      inplanes = planes * expansion
  state["fc.weight"] = rng.standard_normal((1000, inplanes), np.float32)
  state["fc.bias"] = rng.standard_normal(1000, np.float32)
  return state


def _hwio(weight):
  return np.transpose(weight, (2, 3, 1, 0))


def test_fake_state_dict_has_torchvision_size():
  # torchvision resnet50: 25,557,032 parameters (model documentation), in
  # 161 parameter tensors; BN buffers are not parameters.
  state = fake_state_dict(50)
  params = {
    k: v
    for k, v in state.items()
    if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
  }
  assert sum(v.size for v in params.values()) == 25_557_032
  assert len(params) == 161


def test_import_resnet50_places_every_array():
  state = fake_state_dict(50)
  params, stats, report = tvi.import_resnet(state, depth=50)

  # Values land where they should, in Flax layout.
  np.testing.assert_array_equal(
    params["conv1"]["kernel"], _hwio(state["conv1.weight"])
  )
  np.testing.assert_array_equal(
    params["layer3_5"]["conv2"]["kernel"],
    _hwio(state["layer3.5.conv2.weight"]),
  )
  np.testing.assert_array_equal(
    params["layer1_0"]["downsample_conv"]["kernel"],
    _hwio(state["layer1.0.downsample.0.weight"]),
  )
  np.testing.assert_array_equal(
    params["layer4_2"]["bn3"]["scale"], state["layer4.2.bn3.weight"]
  )
  np.testing.assert_array_equal(params["bn1"]["bias"], state["bn1.bias"])
  np.testing.assert_array_equal(
    stats["layer2_0"]["downsample_bn"]["var"],
    state["layer2.0.downsample.1.running_var"],
  )
  np.testing.assert_array_equal(
    stats["layer1_1"]["bn2"]["mean"], state["layer1.1.bn2.running_mean"]
  )

  # Every backbone variable is covered, with the model's shapes.
  expected = model_testing.abstract_variables(
    resnet.ResNet(depth=50), (1, 32, 32, 3)
  )
  assert jax.tree.map(np.shape, {"params": params, "batch_stats": stats}) == (
    jax.tree.map(lambda s: s.shape, expected)
  )
  assert not report.missing
  assert len(report.loaded) == len(jax.tree.leaves(expected))
  # Only the classifier and the batch counters are left over.
  counters = [k for k in state if k.endswith("num_batches_tracked")]
  assert sorted(report.unused) == sorted(["fc.weight", "fc.bias", *counters])
  assert "unused: fc.weight" in report.summary()
  # Every state-dict key is either loaded or reported unused.
  loaded = {key for key, _ in report.loaded}
  assert loaded | set(report.unused) == set(state)


def test_import_resnet18_basic_blocks():
  state = fake_state_dict(18, width=1 / 16)
  params, stats, report = tvi.import_resnet(state, depth=18, width=1 / 16)
  assert "downsample_conv" not in params["layer1_0"]  # 4 -> 4 channels.
  np.testing.assert_array_equal(
    params["layer2_0"]["downsample_conv"]["kernel"],
    _hwio(state["layer2.0.downsample.0.weight"]),
  )
  assert "conv3" not in params["layer4_1"]
  assert not report.missing


def test_shape_mismatch_names_the_key():
  state = fake_state_dict(18, width=1 / 16)
  state["layer3.1.conv2.weight"] = np.zeros((16, 16, 5, 5), np.float32)
  with pytest.raises(ValueError, match=r"layer3\.1\.conv2\.weight") as info:
    tvi.import_resnet(state, depth=18, width=1 / 16)
  assert "params/layer3_1/conv2/kernel" in str(info.value)
  # Importing at the wrong width fails on the first array it checks.
  with pytest.raises(ValueError, match=r"^\S+\.(weight|bias): shape"):
    tvi.import_resnet(fake_state_dict(18, width=1 / 16), depth=18)


def test_missing_key():
  state = fake_state_dict(18, width=1 / 16)
  del state["layer2.1.bn1.running_var"]
  with pytest.raises(KeyError, match=r"batch_stats/layer2_1/bn1/var"):
    tvi.import_resnet(state, depth=18, width=1 / 16)
  params, stats, report = tvi.import_resnet(
    state, depth=18, width=1 / 16, strict=False
  )
  assert report.missing == ["batch_stats/layer2_1/bn1/var"]
  assert "var" not in stats["layer2_1"]["bn1"]
  assert "mean" in stats["layer2_1"]["bn1"]


def test_prefix_and_grey_input():
  state = {f"backbone.{k}": v for k, v in fake_state_dict(18, 1 / 16).items()}
  state["aux_classifier.0.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  params, _, report = tvi.import_resnet(
    state, depth=18, width=1 / 16, prefix="backbone.", in_channels=1
  )
  # A grey image through the summed kernel = the same image in RGB.
  np.testing.assert_allclose(
    params["conv1"]["kernel"],
    _hwio(state["backbone.conv1.weight"]).sum(axis=2, keepdims=True),
    rtol=1e-6,
  )
  assert params["conv1"]["kernel"].shape == (7, 7, 1, 4)
  assert "aux_classifier.0.weight" in report.unused
  assert ("backbone.conv1.weight", "params/conv1/kernel") in report.loaded
  with pytest.raises(ValueError, match="conv1.weight"):
    tvi.import_resnet(
      state, depth=18, width=1 / 16, prefix="backbone.", in_channels=2
    )


def test_torchvision_key():
  assert tvi.torchvision_key("params", ("conv1", "kernel")) == "conv1.weight"
  assert (
    tvi.torchvision_key("batch_stats", ("layer4_2", "downsample_bn", "var"))
    == "layer4.2.downsample.1.running_var"
  )
  assert (
    tvi.torchvision_key("params", ("layer3_22", "bn3", "scale"))
    == "layer3.22.bn3.weight"
  )


@pytest.mark.slow
def test_graft_into_deeplab():
  width = 1 / 16
  model = deeplab.DeepLabV3(
    num_classes=2, backbone="resnet18", width=width, aspp_features=8
  )
  x = jnp.ones((1, 33, 45, 1))
  # Stand-in for `model.init` (compiled elsewhere): the right structure,
  # filled with a constant that no imported array has.
  variables = jax.tree.map(
    lambda s: jnp.full(s.shape, 0.5, s.dtype),
    model_testing.abstract_variables(model, x.shape),
  )
  params, stats, _ = tvi.import_resnet(
    fake_state_dict(18, width), depth=18, width=width, in_channels=1
  )
  new_params = tvi.graft(variables["params"], params, "backbone")
  new_stats = tvi.graft(variables["batch_stats"], stats, "backbone")
  # The backbone is replaced, the head kept, the input left untouched.
  np.testing.assert_array_equal(
    new_params["backbone"]["layer2_1"]["conv1"]["kernel"],
    params["layer2_1"]["conv1"]["kernel"],
  )
  np.testing.assert_array_equal(
    new_stats["backbone"]["bn1"]["var"], stats["bn1"]["var"]
  )
  np.testing.assert_array_equal(
    new_params["aspp"]["project"]["conv"]["kernel"],
    variables["params"]["aspp"]["project"]["conv"]["kernel"],
  )
  assert not np.array_equal(
    variables["params"]["backbone"]["bn1"]["bias"], params["bn1"]["bias"]
  )
  assert jax.tree.map(jnp.shape, new_params) == jax.tree.map(
    jnp.shape, variables["params"]
  )
  # The grafted variables run.
  logits = model_testing.jit(lambda v, x: model.apply(v, x, train=False))(
    {"params": new_params, "batch_stats": new_stats}, x
  )
  assert logits.shape == (1, 33, 45, 2)
  assert bool(jnp.all(jnp.isfinite(logits)))

  with pytest.raises(KeyError, match="decoder"):
    tvi.graft(variables["params"], params, "decoder")
  bad = {"bn1": {"scale": np.zeros(5, np.float32)}}
  with pytest.raises(ValueError, match="backbone/bn1/scale"):
    tvi.graft(variables["params"], bad, "backbone")
  with pytest.raises(KeyError, match="backbone/layer9_0"):
    tvi.graft(variables["params"], {"layer9_0": {"k": np.zeros(1)}}, "backbone")


def test_load_without_torch_explains(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails.
  with pytest.raises(ImportError, match="optional extra"):
    tvi.load_torch_state_dict(str(tmp_path / "resnet50.pth"))


TESTDATA = pathlib.Path(__file__).resolve().parent / "testdata"


@pytest.mark.slow
@pytest.mark.parametrize(
  "name, depth, dilation",
  [
    ("torchvision_resnet18", 18, (False, False, False)),
    ("torchvision_resnet50_dilated", 50, (False, True, True)),
  ],
)
def test_matches_stored_torchvision_activations(name, depth, dilation):
  # A seeded torchvision ResNet at width 1/16 and its stage outputs on a
  # fixed input, written by testdata/make_torchvision_reference.py (its
  # environment in testdata/README.md).
  with np.load(TESTDATA / f"{name}.npz") as stored:
    ref = {key: stored[key] for key in stored.files}
  meta = json.loads(str(ref["meta"]))
  assert (meta["depth"], tuple(meta["replace_stride_with_dilation"])) == (
    depth,
    dilation,
  )
  state = {
    key.removeprefix("state/"): value
    for key, value in ref.items()
    if key.startswith("state/")
  }
  params, stats, report = tvi.import_resnet(
    state, depth=depth, width=meta["width"]
  )
  assert report.unused and all(
    k.endswith("num_batches_tracked") for k in report.unused
  )
  assert not report.missing

  model = resnet.ResNet(
    depth=depth, width=meta["width"], replace_stride_with_dilation=dilation
  )
  got = model_testing.jit(lambda v, x: model.apply(v, x, train=False))(
    {"params": params, "batch_stats": stats},
    ref["input"].transpose(0, 2, 3, 1),
  )
  for stage in ("layer1", "layer2", "layer3", "layer4"):
    value = ref[stage]
    assert got[stage].shape == value.shape, stage
    scale = np.abs(value).max()
    assert scale > 0, stage
    np.testing.assert_allclose(
      got[stage] / scale, value / scale, atol=1e-4, err_msg=stage
    )
