"""Tests for medseg_jax.explain: each method against a closed form, a brute
force or a property a plausible bug breaks; jit in 2-D and 3-D; names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from medseg_jax import explain
from medseg_jax import models
from medseg_jax.explain import cam
from medseg_jax.explain import targets


class DenseLinear(nn.Module):
  """`logits[v, k] = sum_u W[u, v, k] x[u] + b[v, k]`: every output voxel
  sees every input value, through its own weights."""

  num_classes: int = 2

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    spatial = x.shape[1:-1]
    out = nn.Dense(int(np.prod(spatial)) * self.num_classes)(
      x.reshape(x.shape[0], -1)
    )
    return out.reshape(x.shape[0], *spatial, self.num_classes)


def _linear(shape=(2, 6, 5, 2), num_classes=3):
  model = DenseLinear(num_classes)
  x = jax.random.normal(jax.random.key(1), shape)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  kernel = np.asarray(variables["params"]["Dense_0"]["kernel"])
  # [u, (v, k)] -> [*S_in, C, *S_out, K]
  kernel = kernel.reshape(*shape[1:], *shape[1:-1], num_classes)
  return model, variables, x, kernel


def _unet(dims=2, name="unet", size=16, batch=2, features=(4, 8)):
  model = models.get_model(
    name, num_classes=3, spatial_dims=dims, features=features, norm="batch"
  )
  x = jax.random.normal(jax.random.key(3), (batch, *(size,) * dims, 1))
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(
    jax.random.key(2), x
  )
  return model, variables, x


def _jit(fn, model, **options):
  """`fn(model, variables, x, target, **options)` jitted over (variables,
  x, target); eager op-by-op dispatch would dominate the tests' time."""
  return jax.jit(lambda v, x, t: fn(model, v, x, t, **options))


def _score(model):
  """Jitted `(variables, x, target, region) -> f32[B]`."""
  return jax.jit(lambda v, x, t, r: targets.score_of(model, v, x, t, r))


def _region(model):
  return jax.jit(lambda v, x, t: targets.region_of(model, v, x, t))


# ---- gradients ------------------------------------------------------------


def test_saliency_of_a_linear_model_is_its_weights():
  model, variables, x, kernel = _linear()
  voxel, c = (4, 1), 2
  target = explain.Target(class_index=c, region="voxel", voxel=voxel)
  saliency = _jit(explain.saliency, model)
  sal = saliency(variables, x, target)
  want = kernel[..., voxel[0], voxel[1], c]  # [*S_in, C]
  for b in range(x.shape[0]):
    np.testing.assert_allclose(sal[b], want, rtol=1e-5, atol=1e-6)
  # A region sums its voxels' weights.
  mask = np.zeros(x.shape[1:-1], bool)
  mask[1, 1] = mask[5, 3] = True
  target = explain.Target(class_index=0, region="mask", mask=mask)
  sal = saliency(variables, x, target)
  want = kernel[..., 1, 1, 0] + kernel[..., 5, 3, 0]
  np.testing.assert_allclose(sal[1], want, rtol=1e-5, atol=1e-6)


def test_smoothgrad_of_a_linear_model_is_its_weights():
  # The gradient of a linear model is the same at every noisy copy.
  model, variables, x, kernel = _linear()
  target = explain.Target(class_index=1, region="voxel", voxel=(2, 3))
  want = kernel[..., 2, 3, 1]
  mean = _jit(
    explain.smoothgrad, model, samples=5, magnitude=False, batch_size=2
  )(variables, x, target)
  rms = _jit(explain.smoothgrad, model, samples=3)(variables, x, target)
  np.testing.assert_allclose(mean[0], want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(rms[1], np.abs(want), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("baseline", [0.0, 0.5])
def test_integrated_gradients_are_complete(baseline):
  model, variables, x = _unet()
  target = explain.Target(class_index=1, region="all")
  ig = _jit(
    explain.integrated_gradients,
    model,
    baseline=baseline,
    steps=48,
    batch_size=16,
  )(variables, x, target)
  region = _region(model)(variables, x, target)
  score = _score(model)
  base = jnp.full_like(x, baseline)
  drop = score(variables, x, target, region)
  drop -= score(variables, base, target, region)
  total = ig.reshape(ig.shape[0], -1).sum(axis=1)
  assert np.all(np.abs(drop) > 1e-3)
  np.testing.assert_allclose(total, drop, rtol=0.01)


def test_quadrature_weights_integrate_polynomials():
  for rule, degree in (("gauss_legendre", 7), ("trapezoid", 1)):
    nodes, weights = explain.gradients.quadrature(4, rule)
    assert np.isclose(weights.sum(), 1.0)
    assert np.isclose((weights * nodes**degree).sum(), 1 / (degree + 1))


# ---- Grad-CAM -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp"])
def test_gradcam_at_the_head_has_a_closed_form(method):
  # At the head, A = logits and dS/dA_k = region * [k == c], so Grad-CAM is
  # relu(mean(region) * logits_c) and Grad-CAM++ relu(n / (2 + sum A_c)
  # * logits_c) with n the region's size.
  model, variables, x = _unet()
  target = explain.Target(class_index=2, region="all")
  fn = getattr(explain, method)
  got = _jit(fn, model, layer="head")(variables, x, target)
  logits = np.asarray(targets.forward(model, variables, x))[..., 2]
  if method == "gradcam":
    weight = 1.0
  else:
    size = np.prod(x.shape[1:-1])
    weight = size / (2 + logits.reshape(len(x), -1).sum(1))
    weight = weight[:, None, None]
  np.testing.assert_allclose(
    got, np.maximum(weight * logits, 0), rtol=1e-4, atol=1e-5
  )


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp"])
def test_gradcam_is_non_negative_with_the_input_shape(method):
  model, variables, x = _unet(features=(4, 8, 16))
  target = explain.Target(class_index=1, region="all")
  out = _jit(getattr(explain, method), model, layer="bottleneck")(
    variables, x, target
  )
  assert out.shape == x.shape[:-1]
  assert float(out.min()) >= 0.0
  assert float(out.max()) > 0.0


# ---- occlusion ------------------------------------------------------------


@pytest.mark.slow
def test_occlusion_with_one_box_over_the_image_is_the_score_drop():
  model, variables, x = _unet()
  target = explain.Target(class_index=1, region="all")
  out = _jit(explain.occlusion, model, window=64, stride=1, fill=0.25)(
    variables, x, target
  )
  region = _region(model)(variables, x, target)
  score = _score(model)
  fill = jnp.full_like(x, 0.25)
  drop = score(variables, x, target, region)
  drop -= score(variables, fill, target, region)
  want = np.broadcast_to(np.asarray(drop)[:, None, None], out.shape)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_occlusion_equals_brute_force():
  model, variables, x = _unet(size=8)
  target = explain.Target(class_index=0, region="predicted")
  out = _jit(
    explain.occlusion, model, window=4, stride=3, fill="mean", batch_size=2
  )(variables, x, target)
  region = _region(model)(variables, x, target)
  scorer = _score(model)
  clean = np.asarray(scorer(variables, x, target, region))
  total = np.zeros(out.shape)
  count = np.zeros(out.shape[1:])
  # Box starts per axis: 0, 3 and the one ending at the border (4).
  for i in (0, 3, 4):
    for j in (0, 3, 4):
      occluded = np.array(x)
      for b in range(len(x)):
        occluded[b, i : i + 4, j : j + 4] = x[b].mean()
      score = scorer(variables, occluded, target, region)
      total[:, i : i + 4, j : j + 4] += (clean - np.asarray(score))[
        :, None, None
      ]
      count[i : i + 4, j : j + 4] += 1
  np.testing.assert_allclose(out, total / count, rtol=1e-4, atol=1e-4)


# ---- attention gates ------------------------------------------------------


@pytest.mark.slow
def test_attention_maps_lie_in_unit_interval():
  model, variables, x = _unet(name="attention_unet")
  names = explain.gate_names(model)
  assert names == ("attention_0", "mean")
  for gate in names:
    out = _jit(explain.attention, model, gate=gate)(variables, x, None)
    assert out.shape == x.shape[:-1]
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(out.max() - out.min()) > 0.0  # Not a constant map.


# ---- targets --------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 12, 11), (2, 6, 7, 5)])
def test_largest_component_matches_scipy(shape):
  rng = np.random.default_rng(0)
  mask = rng.random(shape) < 0.45
  got = np.asarray(jax.jit(targets.largest_component)(mask))
  for b in range(shape[0]):
    components, n = scipy.ndimage.label(mask[b])
    sizes = np.bincount(components.ravel())[1:]
    assert n > 1 and got[b].sum() == sizes.max()
    # One of scipy's largest components, all of it.
    (ids,) = np.unique(components[got[b]]).reshape(1, -1)
    assert len(ids) == 1 and sizes[ids[0] - 1] == sizes.max()
    np.testing.assert_array_equal(got[b], components == ids[0])


def test_regions():
  logits = np.zeros((1, 4, 4, 2), np.float32)
  logits[0, :, :, 1] = -1.0
  logits[0, 0, :2, 1] = logits[0, 3, :, 1] = 1.0  # Two class-1 components.
  predicted = targets.region_mask(logits, explain.Target(1))
  largest = targets.region_mask(
    logits, explain.Target(1, region="largest_component")
  )
  assert predicted.sum() == 6 and largest.sum() == 4
  assert np.all(np.asarray(largest)[0, 3] == 1)


# ---- jit, 2-D and 3-D -----------------------------------------------------

OPTIONS = {
  "smoothgrad": dict(samples=2),
  "integrated_gradients": dict(steps=2),
  "occlusion": dict(window=4, stride=4),
  "gradcam": dict(layer="down_0"),
  "gradcam_pp": dict(layer="bottleneck"),
}


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", list(explain.METHODS))
def test_every_method_runs_under_jit(method, dims):
  name = "attention_unet" if method == "attention" else "unet"
  model, variables, x = _unet(dims, name, size=8, features=(2, 4))
  target = explain.Target(class_index=1, region="all")
  fn = explain.make_explainer(model, method, target, **OPTIONS.get(method, {}))
  out = fn(variables, x)
  assert out.shape == x.shape[:-1]
  assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).max()) > 0


def test_make_explainer_takes_a_mask_at_call_time():
  model, variables, x, kernel = _linear(shape=(1, 4, 4, 1), num_classes=2)
  mask = np.zeros((4, 4), bool)
  target = explain.Target(class_index=1, region="mask", mask=mask)
  fn = explain.make_explainer(model, "saliency", target)
  mask[2, 1] = True
  np.testing.assert_allclose(
    fn(variables, x, mask)[0], np.abs(kernel[..., 0, 2, 1, 1]), rtol=1e-5
  )


def test_sliding_window_explain_reproduces_a_pointwise_map():
  # A 1x1 convolution's saliency over the mask is its weight inside the
  # mask and 0 outside, whatever window sees it.
  model = nn.Conv(2, (1, 1))
  x = jax.random.normal(jax.random.key(0), (1, 12, 10, 3))
  variables = model.init(jax.random.key(1), x)

  class Wrapped(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False):
      return nn.Conv(2, (1, 1), name="conv")(x)

  wrapped = Wrapped()
  variables = {"params": {"conv": variables["params"]}}
  mask = np.zeros((12, 10), bool)
  mask[3:9, 2:5] = True
  target = explain.Target(class_index=1, region="mask", mask=mask)
  fn = explain.make_explainer(wrapped, "saliency", target)
  out = explain.sliding_window_explain(
    lambda w, m: fn(variables, w, m), x[0], window=(8, 6), mask=mask
  )
  weight = np.abs(np.asarray(variables["params"]["conv"]["kernel"])[0, 0, :, 1])
  np.testing.assert_allclose(out, mask * weight.max(), rtol=1e-5, atol=1e-6)


# ---- names ----------------------------------------------------------------


@pytest.mark.slow
def test_unknown_names_list_the_valid_ones():
  model, variables, x = _unet()
  target = explain.Target(class_index=1)
  with pytest.raises(ValueError, match="valid methods: .*'gradcam_pp'"):
    explain.explain("gradcamm", model, variables, x, target)
  with pytest.raises(ValueError, match="valid layers: .*'bottleneck'"):
    explain.gradcam(model, variables, x, target, layer="bottlenek")
  with pytest.raises(ValueError, match="valid classes: 0=background, 1=cell"):
    explain.class_index(("background", "cell"), "nucleus")
  assert explain.class_index(("background", "cell"), "cell") == 1
  with pytest.raises(ValueError, match="valid options: .*'window'"):
    explain.make_explainer(model, "occlusion", target, windows=3)
  with pytest.raises(ValueError, match="valid regions"):
    explain.Target(class_index=1, region="box")
  with pytest.raises(ValueError, match="attention_unet"):
    explain.attention(model, variables, x)
  attention_model, attention_variables, _ = _unet(name="attention_unet")
  with pytest.raises(ValueError, match="valid gates: .*'attention_0'"):
    explain.attention(attention_model, attention_variables, x, gate="g")
  with pytest.raises(ValueError, match="3 classes"):
    explain.make_explainer(model, "saliency", explain.Target(5))(variables, x)


@pytest.mark.slow
def test_layer_names_are_the_models_modules():
  model, variables, x = _unet()
  names = cam.layer_names(model, variables, x)
  assert {"down_0", "bottleneck", "up_0", "head", "down_0/conv_1"} <= set(names)
  assert cam.default_layer(names) == "bottleneck"
