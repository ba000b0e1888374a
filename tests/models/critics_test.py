"""Tests for medseg_jax.models.critics (SegAN critic and PatchGAN)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from medseg_jax.models import critics


def _build(**options):
  spatial_dims = options.pop("spatial_dims", 2)
  return critics.from_config(ml_collections.ConfigDict(options), spatial_dims)


@pytest.mark.slow
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_output_shapes(spatial_dims):
  shape = (2,) + (16,) * spatial_dims
  image, maps = jnp.ones(shape + (2,)), jnp.ones(shape + (3,))
  segan = _build(name="segan", features=(4, 8), spatial_dims=spatial_dims)
  features = segan.apply(
    segan.init(jax.random.key(0), image, maps), image, maps
  )
  # The masked input (2 channels x 3 maps), then one level per conv.
  assert [f.shape for f in features] == [
    shape + (6,),
    (2,) + (8,) * spatial_dims + (4,),
    (2,) + (4,) * spatial_dims + (8,),
  ]
  patch = _build(
    name="patchgan", ndf=2, num_layers=2, spatial_dims=spatial_dims
  )
  logits = patch.apply(patch.init(jax.random.key(0), image, maps), image, maps)
  assert logits.shape == (2,) + (4,) * spatial_dims + (1,)


@pytest.mark.slow
def test_patchgan_sees_70_pixel_patches():
  # pix2pix's 3-layer PatchGAN: each logit depends on a 70x70 input patch
  # (Isola et al. 2017). Measured as the support of one logit's gradient.
  critic = _build(name="patchgan", ndf=2, num_layers=3, norm="none")
  image, maps = jnp.ones((1, 128, 128, 1)), jnp.ones((1, 128, 128, 1))
  variables = critic.init(jax.random.key(0), image, maps)

  def centre_logit(x):
    return critic.apply(variables, x, maps)[0, 8, 8, 0]

  grad = np.abs(np.asarray(jax.grad(centre_logit)(image))[0, :, :, 0])
  rows, cols = np.nonzero(grad.sum(axis=1))[0], np.nonzero(grad.sum(axis=0))[0]
  assert rows.max() - rows.min() + 1 == 70
  assert cols.max() - cols.min() + 1 == 70


def _scaled_kernels(params, factor):
  return jax.tree_util.tree_map_with_path(
    lambda path, x: x * factor if "kernel" in jax.tree_util.keystr(path) else x,
    params,
  )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["segan", "patchgan"])
def test_spectral_norm_makes_the_critic_invariant_to_kernel_scale(name):
  # W / sigma(W) does not change when W is scaled, and the power iteration's
  # vector does not either; without spectral norm the output does change.
  options = dict(features=(4, 8)) if name == "segan" else dict(ndf=4)
  image = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
  maps = jax.random.uniform(jax.random.key(2), (2, 32, 32, 2))
  for spectral in (True, False):
    critic = _build(name=name, norm="none", spectral_norm=spectral, **options)
    variables = critic.init(jax.random.key(0), image, maps)
    # Let the power iteration converge first.
    for _ in range(5 if spectral else 0):
      _, updates = critic.apply(
        variables, image, maps, update_stats=True, mutable=["batch_stats"]
      )
      variables = {**variables, **updates}
    out = jax.tree.leaves(critic.apply(variables, image, maps))[-1]
    scaled = {**variables, "params": _scaled_kernels(variables["params"], 7)}
    out_scaled = jax.tree.leaves(critic.apply(scaled, image, maps))[-1]
    if spectral:
      np.testing.assert_allclose(out_scaled, out, rtol=1e-3, atol=1e-5)
    else:
      assert not np.allclose(out_scaled, out, rtol=1e-2)


def test_unknown_names_and_options_list_the_valid_ones():
  with pytest.raises(ValueError, match="patchgan.*segan"):
    _build(name="wgan")
  with pytest.raises(ValueError, match="ndf"):
    _build(name="patchgan", features=(4,))
  with pytest.raises(ValueError, match="instance"):
    _build(name="segan", norm="batch")
