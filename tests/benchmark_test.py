"""Tests for the suite runner `medseg_jax.benchmark`."""

import json
import math
import os
import re
import textwrap

import pytest

from medseg_jax import baselines
from medseg_jax import benchmark
from medseg_jax import models
from medseg_jax.data import registry


def _write_suite(path, body):
  path.write_text(textwrap.dedent(body))
  return str(path)


def test_load_suite_checks_its_fields(tmp_path):
  with pytest.raises(FileNotFoundError):
    benchmark.load_suite(str(tmp_path / "absent.py"))
  no_fn = _write_suite(tmp_path / "a.py", "X = 1\n")
  with pytest.raises(ValueError, match="get_suite"):
    benchmark.load_suite(no_fn)
  repeated = _write_suite(
    tmp_path / "b.py",
    """
    def get_suite():
      e = dict(name="m", config="configs/unet_synthetic.py")
      return dict(name="s", experiments=[e, e])
    """,
  )
  with pytest.raises(ValueError, match="repeats"):
    benchmark.load_suite(repeated)


# Suite -> (experiments, baselines, pools), as each suite's docstring says.
SHIPPED = {
  "data_size_synthetic2d": (4, 2, 0),
  "zoo_synthetic2d": (9, 3, 0),
  "zoo_synthetic3d": (2, 2, 0),
  "isbi_kfold": (5, 5, 2),
  "zoo_isbi": (50, 5, 11),
  "zoo_3d": (16, 1, 0),
  "losses_quick": (14, 0, 0),
}


def _field(config, dotted: str):
  """`config.a.b` for "a.b"; fails on a name the config does not have."""
  for part in dotted.split("."):
    assert part in config, f"{dotted!r}: no field {part!r}"
    config = config[part]
  return config


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_suites_resolve_to_runnable_configs(name):
  suite = benchmark.load_suite(f"configs/benchmarks/{name}.py")
  assert suite.name == name
  counts = (len(suite.experiments), len(suite.baselines), len(suite.pools))
  assert counts == SHIPPED[name]
  for entry in [*suite.experiments, *suite.baselines]:
    # The config and its argument load; every override names a real field
    # (a typo would otherwise only fail hours into a suite run).
    config = benchmark._load_config(entry["config"])
    for key, value in entry.get("overrides", {}).items():
      _field(config, key)
      benchmark._set(config, key, value)
    if "model" in config and "method" not in entry:
      # The patch the suite trains on suits the model (SwinUNETR wants
      # multiples of 32): caught here, not after an hour of other rows.
      multiple = models.pad_multiple(config)
      assert all(p % multiple == 0 for p in config.data.patch_size), entry
    spec = registry.get_dataset_spec(config.dataset)
    if "method" in entry:
      method = baselines.get_baseline(
        entry["method"], num_classes=spec.num_classes, **entry["kwargs"]
      )
      assert method.num_classes == spec.num_classes


def test_data_size_suite_trains_on_growing_shares_with_three_seeds():
  suite = benchmark.load_suite("configs/benchmarks/data_size_synthetic2d.py")
  shares = []
  for experiment in suite.experiments:
    assert tuple(experiment["seeds"]) == (0, 1, 2)
    config = benchmark._load_config(experiment["config"])
    shares.append(config.data.train_percent)
  assert shares == [10, 25, 50, 100]


def _slices(split: str) -> set[tuple[str, int]]:
  """ISBI slices named by a TFDS split string ("train[6:12]+validation");
  the builder has 24 train and 6 validation slices."""
  sizes = {"train": 24, "validation": 6}
  out = set()
  for part in split.split("+"):
    found = re.fullmatch(r"(\w+)(?:\[(\d*):(\d*)\])?", part)
    assert found, part
    name, start, stop = found.groups()
    window = slice(int(start) if start else None, int(stop) if stop else None)
    out |= {(name, i) for i in range(sizes[name])[window]}
  return out


def test_isbi_folds_partition_the_slices():
  suite = benchmark.load_suite("configs/benchmarks/isbi_kfold.py")
  every = _slices("train+validation")
  held_out = []
  for experiment in suite.experiments:
    config = benchmark._load_config(experiment["config"])
    test, train = _slices(config.test_split), _slices(config.train_split)
    assert len(test) == 6 and not test & train and test | train == every
    held_out.append(test)
  assert set().union(*held_out) == every  # Five disjoint folds of six.
  for pool, entries in zip(
    suite.pools, (suite.experiments, suite.baselines), strict=True
  ):
    assert list(pool["members"]) == [e["name"] for e in entries]


def test_tables_and_plot(tmp_path):
  rows = [
    benchmark.Row(
      "A", "model", [0.9, 0.8], [1.0, 3.0], [0.85], 60.0, 1234, "x"
    ),
    benchmark.Row(
      "B", "baseline", [0.5, math.nan], [math.nan, 2.0], [0.5], 1.0, None, "y"
    ),
  ]
  markdown = benchmark.write_tables(rows, tmp_path)
  assert "| A | 0.850 ± 0.050 | 2.00 ± 1.00 | 0.850 | 1.0 min | 1,234 |" in (
    markdown
  )
  assert "| B | 0.500 ± 0.000 | 2.00 ± 0.00 |" in markdown
  assert (tmp_path / "results.csv").read_text().count("\n") == 3
  assert (tmp_path / "dice.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.long
def test_suite_end_to_end(tmp_path, synthetic_2d_dir, monkeypatch):
  """One tiny model run and one baseline, through the real entry points."""
  monkeypatch.setenv("MEDSEG_DATA_DIR", str(synthetic_2d_dir))
  suite = benchmark.load_suite(
    _write_suite(
      tmp_path / "suite.py",
      """
      def get_suite():
        tiny = {"model.features": (4, 8), "data.patch_size": (32, 32),
                "num_train_steps": 4, "eval_every_steps": 4,
                "checkpoint_every_steps": 4, "test_split": "test[:3]",
                "num_overlays": 1}
        return dict(
          name="tiny",
          experiments=[dict(name="unet", seeds=(0,), overrides=tiny,
                            config="configs/unet_synthetic.py:runlocal")],
          baselines=[dict(name="otsu", method="otsu",
                          config="configs/unet_synthetic.py",
                          overrides={"test_split": "test[:3]"},
                          kwargs=dict(num_clusters=4, fit_mapping=True),
                          fit_cases=4)],
        )
      """,
    )
  )
  model = benchmark.run_experiment(
    suite.experiments[0], tmp_path / "runs", dry_run=False
  )
  assert len(model.dice) == 3 and model.params > 0
  assert all(0 <= d <= 1 for d in model.dice)

  # Run again: the finished run's report is read, no trainer is started.
  def no_subprocess(*args, **kwargs):
    raise AssertionError("a finished run was started again")

  monkeypatch.setattr(benchmark.subprocess, "run", no_subprocess)
  again = benchmark.run_experiment(
    suite.experiments[0], tmp_path / "runs", dry_run=False
  )
  assert again.dice == model.dice
  baseline = benchmark.run_baseline(suite.baselines[0], "test")
  assert len(baseline.dice) == 3
  assert baseline.dice[0] > 0.3  # Otsu finds the bright organ at least.
  markdown = benchmark.write_tables([model, baseline], tmp_path / "out")
  assert "| unet |" in markdown and "| otsu |" in markdown


def test_finished_report_needs_the_overrides_the_last_checkpoint_and_a_later_report(
  tmp_path,
):
  workdir = tmp_path / "run"
  assert benchmark.finished_report(workdir, {}) is None  # Nothing there.
  (workdir / "checkpoints" / "10").mkdir(parents=True)
  (workdir / "eval").mkdir()
  (workdir / "config.json").write_text(
    json.dumps({"num_train_steps": 10, "data": {"patch_size": [8, 8]}})
  )
  assert benchmark.finished_report(workdir, {}) is None  # No report.
  report = workdir / "eval" / "test_step10_summary.json"
  report.write_text("{}")
  overrides = {"num_train_steps": 10, "data.patch_size": (8, 8)}
  assert benchmark.finished_report(workdir, overrides) == report
  # Another budget or patch than the suite asks for: not this run.
  assert benchmark.finished_report(workdir, {"num_train_steps": 20}) is None
  assert (
    benchmark.finished_report(workdir, {"data.patch_size": (16, 16)}) is None
  )
  assert benchmark.finished_report(workdir, {"model.width": 2}) is None
  # A report older than the last checkpoint belongs to an earlier run.
  stamp = (workdir / "checkpoints" / "10").stat().st_mtime
  os.utime(report, (stamp - 100, stamp - 100))
  assert benchmark.finished_report(workdir, overrides) is None
  # Without the last step's checkpoint the run is unfinished.
  os.utime(report, (stamp + 100, stamp + 100))
  (workdir / "checkpoints" / "10").rmdir()
  assert benchmark.finished_report(workdir, overrides) is None


def test_pooled_rows_and_unknown_members(tmp_path):
  rows = [
    benchmark.Row("f0", "model", [0.8, 0.6], [1.0, 3.0], [0.7], 60.0, 10, "a"),
    benchmark.Row("f1", "model", [0.9], [2.0], [0.9], 30.0, 10, "b"),
    benchmark.Row("other", "model", [0.1], [9.0], [0.1], 1.0, 5, "c"),
  ]
  pooled = benchmark.pool_rows(rows, "pooled", ["f0", "f1"])
  assert pooled.dice == [0.8, 0.6, 0.9]
  assert pooled.hd95 == [1.0, 3.0, 2.0]
  assert pooled.seed_dice == [0.7, 0.9]
  assert pooled.train_seconds == 90.0
  assert pooled.params == 10
  with pytest.raises(ValueError, match="none of"):
    benchmark.pool_rows(rows, "empty", ["f9"])
  suite = tmp_path / "suite.py"
  suite.write_text(
    "def get_suite():\n"
    "  e = dict(name='m', config='configs/unet_synthetic.py')\n"
    "  return dict(name='s', experiments=[e],"
    " pools=[dict(name='p', members=['m', 'x'])])\n"
  )
  with pytest.raises(ValueError, match=r"unknown methods \['x'\]"):
    benchmark.load_suite(str(suite))


def test_sub_hundredth_distances_keep_digits(tmp_path):
  # Microscopy: 4 nm pixels are 4e-6 mm; two decimals would print 0.00.
  rows = [benchmark.Row("em", "model", [0.8], [1.6e-5], [0.8], 1.0, 1, "x")]
  markdown = benchmark.write_tables(rows, tmp_path)
  assert "| 1.60e-05 ± 0.00 |" in markdown


def test_per_class_dice_table_and_pools(tmp_path):
  rows = [
    benchmark.Row(
      "s0",
      "model",
      [0.7, 0.5],
      [1.0, 1.0],
      [0.6],
      1.0,
      1,
      "a",
      class_dice={"organ": [0.9, 0.7], "vessel": [0.5, 0.3]},
    ),
    benchmark.Row(
      "s1",
      "model",
      [0.8],
      [1.0],
      [0.8],
      1.0,
      1,
      "b",
      class_dice={"organ": [1.0], "vessel": [0.6]},
    ),
    benchmark.Row("em", "model", [0.8], [1.0], [0.8], 1.0, 1, "c"),
  ]
  pooled = benchmark.pool_rows(rows, "both", ["s0", "s1"])
  assert pooled.class_dice == {
    "organ": [0.9, 0.7, 1.0],
    "vessel": [0.5, 0.3, 0.6],
  }
  table = benchmark.per_class_table([*rows, pooled])
  assert table.splitlines()[0] == "| method | organ | vessel |"
  assert "| s0 | 0.800 ± 0.100 | 0.400 ± 0.100 |" in table
  assert "| em |" not in table  # One foreground class: no per-class row.
  markdown = benchmark.write_tables(rows, tmp_path)
  assert "Dice per class" in markdown
  assert (tmp_path / "results_per_class.md").read_text() == (
    benchmark.per_class_table(rows)
  )
  # A pool over members of which only some ran says so.
  partial = benchmark.pool_rows(rows, "three", ["s0", "s1", "s9"])
  assert partial.name == "three (2 of 3 ran)"
  assert benchmark.per_class_table(rows[2:]) == ""


def test_runs_choose_their_own_cpu_flags(monkeypatch):
  # The runner's own (2-D) flags must not reach a 3-D run's environment.
  monkeypatch.setenv("XLA_FLAGS", "--user_flag=1 --runner_added=2")
  monkeypatch.setattr(benchmark, "_XLA_FLAGS_BEFORE", ["--user_flag=1"])
  assert benchmark._run_env()["XLA_FLAGS"] == "--user_flag=1"
  monkeypatch.setattr(benchmark, "_XLA_FLAGS_BEFORE", [None])
  assert "XLA_FLAGS" not in benchmark._run_env()
  monkeypatch.setattr(benchmark, "_XLA_FLAGS_BEFORE", [])
  assert benchmark._run_env()["XLA_FLAGS"].endswith("--runner_added=2")
