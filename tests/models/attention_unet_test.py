"""Tests for medseg_jax.models.attention_unet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medseg_jax.models import layers
from medseg_jax.models.attention_unet import AttentionGate
from medseg_jax.models.attention_unet import AttentionUNet
from medseg_jax.models.attention_unet import attention_maps
from tests.models import model_testing

# Three levels (two gated skips), 4-16 channels, sizes multiples of 4.
FEATURES = (4, 8, 16)
SHAPES = {2: (2, 8, 12, 1), 3: (1, 8, 4, 8, 1)}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("gate_finest", [True, False])
def test_shapes_and_sown_coefficients(spatial_dims, gate_finest):
  shape = SHAPES[spatial_dims]
  model = AttentionUNet(
    num_classes=3,
    features=FEATURES,
    spatial_dims=spatial_dims,
    gate_finest=gate_finest,
  )
  variables, (logits, state) = model_testing.abstract(
    model, shape, mutable=["intermediates"]
  )
  assert set(variables) == {"params", "batch_stats"}  # init sows nothing.
  model_testing.assert_logits(logits, shape, 3)
  levels = (0, 1) if gate_finest else (1,)
  assert model.gated_levels() == levels
  sown = state["intermediates"]
  assert set(sown) == {f"attention_{k}" for k in levels}
  for k in levels:
    (alpha,) = sown[f"attention_{k}"]
    # One map per gated skip, at that skip's resolution.
    assert alpha.shape == (shape[0], *(s // 2**k for s in shape[1:-1]), 1)
    assert alpha.dtype == jnp.float32
  assert {f"gate_{k}" for k in levels} == {
    name for name in variables["params"] if name.startswith("gate_")
  }


@pytest.mark.parametrize("norm", layers.NORMS)
def test_each_norm(norm):
  model = AttentionUNet(num_classes=2, features=FEATURES, norm=norm)
  variables, (logits, state) = model_testing.abstract(
    model, SHAPES[2], mutable=["batch_stats"], train=True
  )
  assert logits.shape == SHAPES[2][:-1] + (2,)
  assert ("batch_stats" in variables) == (norm == "batch")
  assert set(state) == ({"batch_stats"} if norm == "batch" else set())


def test_gate_parameters():
  gate = AttentionGate(5, spatial_dims=3, norm="batch")
  x = jnp.zeros((1, 4, 4, 4, 6))
  g = jnp.zeros((1, 2, 2, 2, 10))
  shapes = jax.eval_shape(
    lambda x, g: gate.init(jax.random.key(0), x, g, train=False), x, g
  )
  params = jax.tree.map(jnp.shape, shapes["params"])
  assert params == {
    "theta_x": {"kernel": (2, 2, 2, 6, 5)},  # W_x: stride 2, no bias.
    "phi_g": {"kernel": (1, 1, 1, 10, 5), "bias": (5,)},  # W_g, b_g.
    "psi": {"kernel": (1, 1, 1, 5, 1), "bias": (1,)},
    "project": {"kernel": (1, 1, 1, 6, 6)},
    "project_norm": {"scale": (6,), "bias": (6,)},
  }
  with pytest.raises(ValueError, match="twice g's resolution"):
    gate.init(jax.random.key(0), x, x, train=False)


@pytest.mark.slow
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_attention_maps(spatial_dims):
  # 3-D with an indivisible input and pad_input: maps are cropped back too.
  shape = (2, 8, 12, 1) if spatial_dims == 2 else (1, 6, 4, 7, 1)
  model = AttentionUNet(
    num_classes=2,
    features=FEATURES,
    spatial_dims=spatial_dims,
    norm="instance",
    pad_input=spatial_dims == 3,
  )
  variables, x = model_testing.init(model, shape)
  maps_fn = model_testing.jit(lambda v, x: attention_maps(model, v, x))
  maps = maps_fn(variables, x)
  assert set(maps) == {"attention_0", "attention_1"}
  for alpha in maps.values():
    assert alpha.shape == shape[:-1]
    assert bool(jnp.all((alpha >= 0) & (alpha <= 1)))
  # The finest map is the sown one, unresampled.
  _, state = model_testing.jit(
    lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"])
  )(variables, x)
  (alpha0,) = state["intermediates"]["attention_0"]
  np.testing.assert_allclose(
    maps["attention_0"], layers.crop_spatial(alpha0, shape[1:-1])[..., 0]
  )
  # The maps depend on the input.
  other = maps_fn(variables, x[::-1] * 3.0 + 1.0)
  for name in maps:
    assert float(jnp.max(jnp.abs(maps[name] - other[name]))) > 1e-3


@pytest.mark.slow
def test_gradients_finite_and_reach_the_gates():
  # Two levels, one gate: the backward pass dominates compile time.
  model = AttentionUNet(num_classes=3, features=(4, 8), norm="batch")
  variables, x = model_testing.init(model, SHAPES[2])
  grads, _ = model_testing.train_gradients(model, variables, x, 3)
  model_testing.assert_finite(grads)
  for name in ("theta_x", "phi_g", "psi", "project"):
    assert bool(jnp.any(grads["gate_0"][name]["kernel"] != 0))


@pytest.mark.slow
def test_jit_equals_eager():
  model = AttentionUNet(num_classes=2, features=FEATURES, norm="none")
  variables, x = model_testing.init(model, SHAPES[2])
  eager = model.apply(variables, x, train=False)
  jitted = model_testing.jit(lambda v, x: model.apply(v, x, train=False))(
    variables, x
  )
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)


def test_input_errors():
  model = AttentionUNet(num_classes=2, features=FEATURES, in_channels=1)
  model_testing.assert_rejects(
    model,
    [
      ((8, 8, 1), r"\[B, H, W, C\]"),
      ((1, 8, 8, 3), "1 input channels"),
      ((1, 10, 8, 1), r"multiples of 4.*\(12, 8\)"),
    ],
  )
  padded = AttentionUNet(num_classes=2, features=FEATURES, pad_input=True)
  _, logits = model_testing.abstract(padded, (1, 10, 7, 1))
  assert logits.shape == (1, 10, 7, 2)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"norm": "layer"}, "norm"),
    ({"upsample": "nearest"}, "upsample"),
    ({"spatial_dims": 4}, "spatial_dims"),
    ({"features": (8,)}, "two entries"),
  ],
)
def test_bad_config_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    AttentionUNet(num_classes=2, **kwargs)
