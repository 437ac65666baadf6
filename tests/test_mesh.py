"""gemmascope.mesh: the one mesh and logical-axis vocabulary of the trainer, the LM and the plan.

Oracles: flax.linen.logical_to_mesh_axes (whose rule convention the mapping follows), jax.make_mesh
itself, and the shardings the trainer and the LM actually place arrays with.
"""

import flax.linen
import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec

from gemmascope import mesh, model
from gemmascope.model import params as lm_params
from gemmascope.train import sharding

LOGICAL = ("batch", "sweep", "d_sae", "d_in", "heads", "mlp", "vocab")


def test_rules_match_flax_on_random_rule_tables():
    # Random ordered rule tables (with fallbacks and None rules) and random arrays of logical
    # axes: without shapes, the mapping is flax's exactly.
    rng = np.random.default_rng(0)
    for _ in range(300):
        rules = [
            (str(rng.choice(LOGICAL)), [None, "data", "model"][rng.integers(3)])
            for _ in range(rng.integers(0, 7))
        ]
        names = list(rng.choice(LOGICAL, size=rng.integers(0, 4), replace=False))
        axes = tuple(None if rng.random() < 0.2 else name for name in names)
        expected = flax.linen.logical_to_mesh_axes(axes, rules)
        assert mesh.logical_to_spec(axes, {"data": 2, "model": 4}, rules) == expected, (
            rules,
            axes,
        )


def test_a_rule_whose_mesh_axis_does_not_divide_is_skipped_for_the_next():
    rules = [("kv_heads", "model"), ("kv_heads", "data"), ("heads", "model")]
    sizes = {"data": 2, "model": 4}
    # 2 KV heads do not split 4 ways: the fallback rule puts them on "data"; without a shape the
    # first rule applies (flax's answer).
    assert mesh.logical_to_spec(("kv_heads", "heads"), sizes, rules, shape=(2, 8)) == PartitionSpec(
        "data", "model"
    )
    assert mesh.logical_to_spec(("kv_heads", "heads"), sizes, rules) == PartitionSpec("model", None)
    assert mesh.logical_to_spec(("kv_heads",), sizes, rules[:1], shape=(2,)) == PartitionSpec(None)


def test_bad_rules_and_axes_are_clear_errors():
    with pytest.raises(
        ValueError,
        match=r"rule \('mlp', 'tensor'\) names mesh axis 'tensor', which the mesh does not",
    ):
        mesh.logical_to_spec(("mlp",), {"data": 1, "model": 2}, [("mlp", "tensor")])
    with pytest.raises(ValueError, match="name one axis twice"):
        mesh.logical_to_spec(("d_sae", "d_sae"), {"data": 1, "model": 2})


@pytest.mark.parametrize(
    "spec, n, expected",
    [
        ([("data", -1), ("model", 1)], 8, {"data": 8, "model": 1}),
        ([("data", 2), ("model", -1)], 8, {"data": 2, "model": 4}),
        ({"model": 2, "data": 4}, 8, {"model": 2, "data": 4}),
    ],
)
def test_axis_sizes_without_devices_equal_the_built_mesh(spec, n, expected):
    assert mesh.axis_sizes(spec, n) == expected
    built = mesh.make_mesh(spec, jax.devices()[:n])
    assert dict(built.shape) == expected
    # jax.make_mesh's own device order and Auto axes (shardings propagated by the compiler).
    reference = jax.make_mesh(tuple(expected.values()), tuple(expected), devices=jax.devices()[:n])
    assert (built.devices == reference.devices).all()
    assert built.axis_types == (AxisType.Auto, AxisType.Auto)


@pytest.mark.parametrize(
    "spec, error",
    [
        ([("data", -1), ("model", 3)], "does not divide the 8 available devices"),
        ([("data", 2), ("model", 2)], "has 4 devices but 8 are available"),
        ([("batch", -1), ("model", 1)], "must name the axes 'data' and 'model'"),
        ([("data", -1), ("model", -1)], "at most one size -1"),
        ([("data", 0), ("model", 8)], r"size of 'data' must be an int >= 1 or -1, got 0"),
    ],
)
def test_bad_mesh_specs_name_the_field(spec, error):
    with pytest.raises(ValueError, match=error) as raised:
        mesh.make_mesh(spec, field="job_cfg.mesh")
    assert "job_cfg.mesh" in str(raised.value)
    with pytest.raises(ValueError, match=error):
        mesh.axis_sizes(spec, 8)


def test_trainer_lm_and_plan_read_the_same_table():
    devices = mesh.make_mesh([("data", 2), ("model", 4)])
    # The trainer's stacked W_enc: latents over "model".
    abstract = {"W_enc": jax.ShapeDtypeStruct((3, 16, 32), np.float32)}
    placed = sharding.stacked_shardings(abstract, devices, mesh.RULES, width=32, d_in=16)
    assert placed["W_enc"].spec == PartitionSpec(None, None, "model")
    # The LM's params: the same function, the same table (model.DEFAULT_RULES is mesh.RULES).
    cfg = model.presets.tiny()
    shardings = model.param_shardings(cfg, devices)
    for spec in lm_params.param_specs(cfg):
        leaf = lm_params.get_leaf(shardings, spec.path)
        expected = mesh.logical_to_spec(spec.axes, dict(devices.shape), mesh.RULES, spec.shape)
        assert leaf.spec == expected, spec.path
    # The plan counts, without devices, the bytes those shardings put on one device.
    params = model.init_params(cfg, jax.random.key(0), mesh=devices)
    on_device0 = sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(params)
        for shard in leaf.addressable_shards
        if shard.device == devices.devices.flat[0]
    )
    assert lm_params.bytes_per_device(cfg, 4, np.float32) == on_device0


def test_batch_rounds_up_to_the_data_axis():
    devices = mesh.make_mesh([("data", 4), ("model", 2)])
    assert [mesh.batch_for_mesh(b, devices) for b in (1, 4, 5)] == [4, 4, 8]


def test_every_logical_axis_of_the_lm_and_the_trainer_has_a_rule():
    named = {axis for spec in lm_params.param_specs(model.presets.tiny()) for axis in spec.axes}
    named |= {axis for axes in sharding.KNOWN_PARAM_AXES.values() for axis in axes}
    named |= {"batch", "sweep", "seq"}
    assert named <= {logical for logical, _ in mesh.RULES}
    assert len({logical for logical, _ in mesh.RULES}) == len(mesh.RULES)  # no silent fallbacks
