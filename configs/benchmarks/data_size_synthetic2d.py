r"""How the amount of labelled data changes the result (2-D phantoms).

  python -m medseg_jax.benchmark \
      --suite=configs/benchmarks/data_size_synthetic2d.py

The same U-Net trained on the first 10, 25, 50 and 100 % of the 256
training phantoms, same steps, scored on the 64 test phantoms; Otsu and a
random walker as the classical references.
"""

from configs import common


def get_suite():
  config = "configs/unet_synthetic.py"
  experiments = [
    dict(
      name=f"U-Net, {p} % labels",
      config=f"{config}:percent={p}",
      seeds=(0, 1, 2),
    )
    for p in (10, 25, 50, 100)
  ]
  baselines = common.classical_baselines(
    config,
    (
      ("Otsu (fitted mapping)", "otsu"),
      ("Random walker (fitted mapping)", "random_walker"),
    ),
  )
  return dict(
    name="data_size_synthetic2d",
    split="test",
    experiments=experiments,
    baselines=baselines,
  )
