"""segmentation_suite.network.aggregator: FedAvg, server momentum and blending, on numpy arrays
and torch tensors, against reference results computed here with numpy in float64."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segmentation_suite.network.aggregator import (
    FedAvgAggregator,
    MomentumAggregator,
    blend_weights,
    weighted_average,
)

torch = pytest.importorskip("torch", reason="torch (the `train` extra) is needed for these tests")

ROOT = Path(__file__).resolve().parents[2]
SLOW_MACHINE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

LAYOUT = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "bn.running_mean": (4,), "scale": ()}


def random_state(rng: np.random.Generator, dtype=np.float32, counter: int = 0) -> dict:
    state = {k: rng.normal(size=shape).astype(dtype) for k, shape in LAYOUT.items()}
    state["bn.num_batches_tracked"] = np.array(counter, dtype=np.int64)
    return state


def as_torch(state: dict) -> dict:
    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def reference_mean(states: list[dict], weights: list[float], key: str) -> np.ndarray:
    stacked = np.stack([np.asarray(s[key], dtype=np.float64) for s in states])
    return np.tensordot(np.asarray(weights, dtype=np.float64), stacked, axes=1) / sum(weights)


# --- FedAvg --------------------------------------------------------------------------------


@SLOW_MACHINE
@given(
    members=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    use_torch=st.booleans(),
)
def test_fedavg_is_the_num_samples_weighted_mean(members, seed, use_torch):
    rng = np.random.default_rng(seed)
    states = [random_state(rng, counter=int(rng.integers(0, 1000))) for _ in range(members)]
    weights = [float(rng.integers(1, 500)) for _ in range(members)]
    aggregator = FedAvgAggregator()
    for state, weight in zip(states, weights, strict=True):
        aggregator.add_update(as_torch(state) if use_torch else state, weight)
    result = aggregator.aggregate()
    for key in LAYOUT:
        value = result[key]
        assert isinstance(value, torch.Tensor if use_torch else np.ndarray)
        assert value.dtype == (torch.float32 if use_torch else np.float32)
        got = value.numpy() if use_torch else value
        np.testing.assert_allclose(got, reference_mean(states, weights, key), rtol=1e-5, atol=1e-6)
    counters = [int(s["bn.num_batches_tracked"]) for s in states]
    assert int(result["bn.num_batches_tracked"]) == max(counters)
    assert aggregator.aggregation_round == 1 and aggregator.update_count == 0


def test_weighted_average_function_and_equal_weights():
    rng = np.random.default_rng(1)
    states = [random_state(rng) for _ in range(3)]
    result = weighted_average(states)
    for key in LAYOUT:
        np.testing.assert_allclose(
            result[key], reference_mean(states, [1, 1, 1], key), rtol=1e-5, atol=1e-6
        )


def test_float16_weights_are_accumulated_without_overflow():
    # 64 members of value 1000 with 100 samples each: a float16 running sum would reach 6.4e6,
    # far past float16's maximum of 65504, and give inf.
    state = {"w": np.full((8,), 1000.0, dtype=np.float16)}
    aggregator = FedAvgAggregator()
    for _ in range(64):
        aggregator.add_update(state, contribution_weight=100)
    result = aggregator.aggregate()
    assert result["w"].dtype == np.float16
    np.testing.assert_array_equal(result["w"], state["w"])


def test_float16_mean_is_the_rounded_exact_mean():
    rng = np.random.default_rng(7)
    states = [{"w": rng.normal(size=(256,)).astype(np.float16)} for _ in range(20)]
    weights = [float(w) for w in rng.integers(1, 50, size=20)]
    result = weighted_average(states, weights)
    exact = reference_mean(states, weights, "w")
    # within one float16 rounding step of the exact mean
    np.testing.assert_allclose(result["w"].astype(np.float64), exact, rtol=2**-10, atol=2**-14)


def test_mixed_kinds_follow_the_first_update_and_keep_dtypes():
    rng = np.random.default_rng(2)
    first = as_torch(random_state(rng))
    second = random_state(rng, dtype=np.float16)  # as a decoded wire copy might be
    result = weighted_average([first, second], [1, 3])
    assert all(isinstance(v, torch.Tensor) for v in result.values())
    assert result["conv.weight"].dtype == torch.float32
    expected = (
        first["conv.weight"].double() + 3 * torch.from_numpy(second["conv.weight"]).double()
    ) / 4
    torch.testing.assert_close(result["conv.weight"].double(), expected, rtol=1e-3, atol=1e-3)
    back = weighted_average([second, first], [3, 1])
    assert isinstance(back["conv.weight"], np.ndarray) and back["conv.weight"].dtype == np.float16


def test_bfloat16_and_bool_entries():
    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16), "flag": torch.tensor(False)}
    b = {"w": torch.tensor([3.0, 4.0], dtype=torch.bfloat16), "flag": torch.tensor(True)}
    result = weighted_average([a, b], [1, 1])
    assert result["w"].dtype == torch.bfloat16
    assert result["w"].tolist() == [2.0, 3.0]
    assert bool(result["flag"]) is True
    as_numpy = weighted_average([{"w": np.ones(2, np.float32)}, {"w": b["w"]}])
    assert as_numpy["w"].tolist() == [2.0, 2.5]


def test_a_real_module_state_dict_loads_back_after_aggregation():
    torch.manual_seed(0)
    models = [
        torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)) for _ in range(3)
    ]
    for model in models:
        model.train()(torch.randn(2, 1, 5, 5))  # moves the BatchNorm statistics
    aggregator = FedAvgAggregator()
    for i, model in enumerate(models):
        aggregator.add_update(model.state_dict(), contribution_weight=i + 1)
    result = aggregator.aggregate()
    target = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    target.load_state_dict(result, strict=True)
    assert hasattr(result, "_metadata")  # module versions travel with the state dict
    expected = sum((i + 1) * m[0].weight.detach() for i, m in enumerate(models)) / 6
    torch.testing.assert_close(target[0].weight.detach(), expected)
    assert int(target[1].num_batches_tracked) == 1


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda s: s.pop("conv.bias"), "missing key 'conv.bias'"),
        (lambda s: s.update(extra=np.zeros(1, np.float32)), "unexpected key 'extra'"),
        (lambda s: s.update({"conv.bias": np.zeros(5, np.float32)}), "'conv.bias' has shape"),
        (lambda s: s.update({"conv.bias": np.zeros(4, np.int64)}), "'conv.bias' is integer"),
    ],
)
def test_mismatched_updates_are_refused_and_change_nothing(change, complaint):
    rng = np.random.default_rng(3)
    good = random_state(rng)
    bad = random_state(rng)
    change(bad)
    aggregator = FedAvgAggregator()
    aggregator.add_update(good, 2)
    with pytest.raises(ValueError, match=complaint):
        aggregator.add_update(bad, 5)
    assert aggregator.update_count == 1
    result = aggregator.aggregate()
    np.testing.assert_array_equal(result["conv.weight"], good["conv.weight"])
    with pytest.raises(ValueError, match=complaint):
        weighted_average([good, bad])


def test_updates_must_match_the_global_model_too():
    aggregator = FedAvgAggregator()
    aggregator.set_global_weights({"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="'w' has shape"):
        aggregator.add_update({"w": np.zeros(4, np.float32)})


def test_values_that_are_not_arrays_are_refused():
    with pytest.raises(TypeError, match="'w': expected a torch tensor or a numpy array, got list"):
        weighted_average([{"w": [1.0, 2.0]}])
    with pytest.raises(TypeError, match="'c'"):
        weighted_average([{"c": np.zeros(2, np.complex64)}])


@pytest.mark.parametrize("weight", [-1, float("nan"), float("inf"), True, "10", None])
def test_bad_contribution_weights_are_refused(weight):
    with pytest.raises(ValueError, match="contribution_weight"):
        FedAvgAggregator().add_update({"w": np.zeros(2, np.float32)}, weight)


def test_zero_total_weight_has_no_mean():
    aggregator = FedAvgAggregator()
    aggregator.add_update({"w": np.ones(2, np.float32)}, 0)
    with pytest.raises(ValueError, match="sum to 0"):
        aggregator.aggregate()


def test_rounds_min_updates_and_contributors():
    aggregator = FedAvgAggregator()
    assert aggregator.aggregate() is None
    aggregator.add_update({"w": np.ones(2, np.float32)}, 1, contributor="ann")
    with pytest.raises(ValueError, match="'ann' already contributed"):
        aggregator.add_update({"w": np.ones(2, np.float32)}, 1, contributor="ann")
    aggregator.add_update({"w": np.full(2, 3.0, np.float32)}, 1, contributor="bo")
    assert aggregator.contributors == ("ann", "bo")
    assert aggregator.aggregate(min_updates=3) is None  # still waiting
    assert aggregator.update_count == 2
    result = aggregator.aggregate(min_updates=2)
    assert result["w"].tolist() == [2.0, 2.0] and aggregator.global_weights is result
    assert aggregator.contributors == () and aggregator.aggregation_round == 1
    aggregator.add_update({"w": np.zeros(2, np.float32)}, 1, contributor="ann")  # new round
    aggregator.reset()
    assert aggregator.update_count == 0 and aggregator.aggregate() is None


def one_round(aggregator: FedAvgAggregator, value: float, use_torch: bool) -> dict:
    """Two updates of mean `value` (value - 1 and value + 1); the round's global weights."""
    for offset in (-1.0, 1.0):
        state = {
            "w": np.full((3, 4), value + offset, np.float32),
            "b": np.full(2, value, np.float32),
        }
        aggregator.add_update(as_torch(state) if use_torch else state, 1)
    return aggregator.aggregate()


def address(tensor) -> int:
    return tensor.data_ptr() if isinstance(tensor, torch.Tensor) else tensor.ctypes.data


@pytest.mark.parametrize("use_torch", [False, True])
def test_globals_that_are_held_keep_their_values_over_later_rounds(use_torch):
    # the sums are reused from round to round: never while anyone holds a round's global,
    # or only one of its tensors
    aggregator = FedAvgAggregator()
    kept = [one_round(aggregator, float(r), use_torch) for r in range(5)]
    only_w = one_round(aggregator, 10.0, use_torch)["w"]
    for r in range(3):
        one_round(aggregator, 20.0 + r, use_torch)
    for r, result in enumerate(kept):
        assert np.asarray(result["w"]).tolist() == np.full((3, 4), float(r)).tolist()
        assert np.asarray(result["b"]).tolist() == [float(r)] * 2
    assert np.asarray(only_w).tolist() == np.full((3, 4), 10.0).tolist()


@pytest.mark.parametrize("use_torch", [False, True])
def test_the_sums_memory_comes_back_once_nobody_holds_it(use_torch):
    aggregator = FedAvgAggregator()
    first = address(one_round(aggregator, 1.0, use_torch)["w"])  # dropped at once
    second = address(one_round(aggregator, 2.0, use_torch)["w"])
    # the global of round 2 is still held (aggregator.global_weights): round 1's comes back
    third = one_round(aggregator, 3.0, use_torch)
    assert address(third["w"]) == first != second
    assert np.asarray(third["w"]).tolist() == np.full((3, 4), 3.0).tolist()


def test_set_global_weights_copies_live_tensors():
    model = torch.nn.Linear(2, 2)
    aggregator = FedAvgAggregator()
    aggregator.set_global_weights(model.state_dict())
    before = aggregator.global_weights["weight"].clone()
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on
    torch.testing.assert_close(aggregator.global_weights["weight"], before)


# --- server momentum -----------------------------------------------------------------------


def reference_fedavgm(rounds: list[list[np.ndarray]], weights: list[float], beta: float):
    """FedAvgM written out in float64: the first round's mean is the model, then
    v = beta * v + (mean - g); g = g + v."""
    models = []
    g = v = None
    for members in rounds:
        mean = np.tensordot(np.asarray(weights), np.stack(members).astype(np.float64), 1)
        mean /= sum(weights)
        if g is None:
            g = mean
            v = np.zeros_like(mean)
        else:
            v = beta * v + (mean - g)
            g = g + v
        models.append(g)
    return models


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("use_torch", [False, True])
def test_momentum_follows_fedavgm_over_rounds(beta, use_torch):
    rng = np.random.default_rng(11)
    weights = [3.0, 1.0, 2.0]
    rounds = [[rng.normal(size=(16,)).astype(np.float32) for _ in weights] for _ in range(5)]
    aggregator = MomentumAggregator(momentum=beta)
    plain = FedAvgAggregator()
    for r, (members, expected) in enumerate(
        zip(rounds, reference_fedavgm(rounds, weights, beta), strict=True)
    ):
        for member, weight in zip(members, weights, strict=True):
            update = {"w": torch.from_numpy(member) if use_torch else member}
            aggregator.add_update(update, weight)
            plain.add_update(update, weight)
        got = aggregator.aggregate()["w"]
        average = plain.aggregate()["w"]
        got = got.numpy() if use_torch else got
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        if beta == 0.0:  # no momentum: exactly FedAvg
            np.testing.assert_allclose(got, average.numpy() if use_torch else average, atol=1e-6)
        elif r >= 2:  # momentum carries the model past the round's average
            assert not np.allclose(got, average.numpy() if use_torch else average, atol=1e-3)


def test_momentum_keeps_moving_towards_a_steady_target():
    # Members that always report the same model: momentum overshoots, then settles there.
    target = {"w": np.ones(4, np.float32), "n": np.array(5)}
    aggregator = MomentumAggregator(momentum=0.5)
    aggregator.set_global_weights({"w": np.zeros(4, np.float32), "n": np.array(0)})
    trajectory = []
    for _ in range(30):
        aggregator.add_update(target, 1)
        trajectory.append(float(aggregator.aggregate()["w"][0]))
    assert trajectory[0] == 1.0 and trajectory[1] == 1.5  # v = 1, then 0.5 * 1 + 0
    assert max(trajectory) > 1.0
    assert abs(trajectory[-1] - 1.0) < 1e-3
    assert int(aggregator.global_weights["n"]) == 5


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5, float("nan"), "0.9", True])
def test_momentum_out_of_range_is_refused(momentum):
    with pytest.raises(ValueError, match="momentum"):
        MomentumAggregator(momentum)


# --- blending ------------------------------------------------------------------------------


def test_blend_ratio_endpoints_are_exact():
    rng = np.random.default_rng(5)
    local = random_state(rng, counter=3)
    other = random_state(rng, counter=8)
    other["conv.bias"][0] = np.inf  # 0 * inf would be nan in a formula
    kept = blend_weights(local, other, 0.0)
    taken = blend_weights(local, other, 1.0)
    for key in LAYOUT:
        np.testing.assert_array_equal(kept[key], local[key])
        np.testing.assert_array_equal(taken[key], other[key])
        assert kept[key] is not local[key]  # copies, not the caller's arrays
    assert int(kept["bn.num_batches_tracked"]) == int(taken["bn.num_batches_tracked"]) == 8


@SLOW_MACHINE
@given(ratio=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1), use_torch=st.booleans())
def test_blend_is_the_convex_combination(ratio, seed, use_torch):
    rng = np.random.default_rng(seed)
    local, other = random_state(rng), random_state(rng)
    result = blend_weights(as_torch(local) if use_torch else local, other, ratio)
    for key in LAYOUT:
        got = result[key].numpy() if use_torch else result[key]
        expected = (1 - ratio) * local[key].astype(np.float64) + ratio * other[key]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert isinstance(result[key], torch.Tensor if use_torch else np.ndarray)


def test_blend_keeps_the_local_dtype():
    local = {"w": torch.zeros(3, dtype=torch.float16)}
    result = blend_weights(local, {"w": np.full(3, 2.0, np.float32)}, 0.25)
    assert result["w"].dtype == torch.float16 and result["w"].tolist() == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("ratio", [-0.01, 1.01, float("nan"), "half", None])
def test_blend_ratio_out_of_range_is_refused(ratio):
    w = {"w": np.zeros(2, np.float32)}
    with pytest.raises(ValueError, match="blend_ratio"):
        blend_weights(w, w, ratio)


def test_blend_refuses_mismatched_models():
    local = {"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float32)}
    with pytest.raises(ValueError, match="missing key 'b'"):
        blend_weights(local, {"a": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="'b' has shape"):
        blend_weights(local, {"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)})


# --- torch stays optional ------------------------------------------------------------------


def test_the_modules_work_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
        "import numpy as np\n"
        "from segmentation_suite.network import aggregator, protocol, relay_config, session\n"
        "r = aggregator.weighted_average([{'w': np.ones(2)}, {'w': np.zeros(2)}], [1, 3])\n"
        "print(r['w'].tolist())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[0.25, 0.25]"


# --- the extension's accumulation kernel ----------------------------------------------------


@pytest.mark.parametrize("sums_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("values_dtype", [np.float32, np.float64])
def test_the_accumulate_kernel_is_numpys_multiply_then_add(sums_dtype, values_dtype):
    from segmentation_suite.network import _relayclient

    rng = np.random.default_rng(5)
    start = rng.normal(size=1000).astype(sums_dtype)
    values = rng.normal(size=1000).astype(values_dtype)
    sums = start.copy()
    _relayclient._fedavg_accumulate(sums, values, 37.0, False)
    product = np.multiply(values, 37.0, dtype=sums_dtype)
    np.testing.assert_array_equal(sums, start + product)
    _relayclient._fedavg_accumulate(sums, values, 0.25, True)
    np.testing.assert_array_equal(sums, np.multiply(values, 0.25, dtype=sums_dtype))


def test_the_accumulate_kernel_refuses_bad_buffers_and_changes_nothing():
    from segmentation_suite.network import _relayclient

    sums = np.ones(4, np.float32)
    frozen = np.ones(4, np.float32)
    frozen.flags.writeable = False
    bad = [
        (sums, np.ones(5, np.float32), ValueError, "4 elements, values 5"),
        (sums, np.ones(4, np.int32), TypeError, "float32 or float64"),
        (sums, np.ones(4, ">f4" if np.little_endian else "<f4"), TypeError, "float32 or float64"),
        (np.ones(4, np.int64), np.ones(4, np.float32), TypeError, "float32 or float64"),
        (sums, np.ones(8, np.float32)[::2], ValueError, "contiguous"),
        (frozen, np.ones(4, np.float32), ValueError, "read-only"),
        (b"\0" * 16, np.ones(4, np.float32), BufferError, "writable"),
    ]
    for target, values, error, message in bad:
        with pytest.raises(error, match=message):
            _relayclient._fedavg_accumulate(target, values, 2.0, False)
    assert sums.tolist() == [1.0] * 4 and frozen.tolist() == [1.0] * 4


@pytest.mark.parametrize("sums_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("values_dtype", [np.float32, np.float64])
def test_the_accumulate_kernel_rounds_to_float16_as_numpy_does(sums_dtype, values_dtype):
    """float16_values: each value as numpy's astype(float16) rounds it (float64 directly, not
    through float32), then the same multiply-then-add; over more than one of the kernel's
    blocks, with values float16 cannot hold (overflow to inf, subnormals, NaN)."""
    from segmentation_suite.network import _relayclient

    rng = np.random.default_rng(6)
    values = (rng.standard_normal(5000) * 3).astype(values_dtype)
    values[:6] = [70000.0, -1e-6, 3e-8, np.nan, 65519.0, 1 + 2**-11 + 2**-40]
    start = rng.standard_normal(5000).astype(sums_dtype)
    with np.errstate(over="ignore"):  # 70000 is inf in float16, as it should be
        rounded = values.astype(np.float16).astype(sums_dtype)
    sums = start.copy()
    _relayclient._fedavg_accumulate(sums, values, 3.0, False, True)
    np.testing.assert_array_equal(sums, start + np.multiply(rounded, 3.0, dtype=sums_dtype))
    _relayclient._fedavg_accumulate(sums, values, 0.5, True, True)
    np.testing.assert_array_equal(sums, np.multiply(rounded, 0.5, dtype=sums_dtype))


@pytest.mark.parametrize("use_torch", [False, True])
def test_float16_values_count_a_push_as_the_float16_wire_delivers_it(use_torch):
    """add_update(float16_values=True) of a state dict gives the bits of adding what a float16
    message of it decodes to: float32 and float64 rounded, float16, bfloat16 and integers
    exact; whichever push comes first in the round."""
    from segmentation_suite.network.codec import decode_weights, serialize_weights

    rng = np.random.default_rng(8)
    mine, theirs = random_state(rng), random_state(rng, counter=3)
    for state in (mine, theirs):
        state["double"] = rng.normal(size=(3, 5))
        state["half"] = rng.normal(size=7).astype(np.float16)
    if use_torch:
        mine, theirs = as_torch(mine), as_torch(theirs)
        mine["brain"] = torch.randn(9, dtype=torch.bfloat16)
        theirs["brain"] = torch.randn(9, dtype=torch.bfloat16)

    def received(state):
        return decode_weights(serialize_weights(state))[0]

    for order in ("mine first", "mine last"):
        direct, wire = FedAvgAggregator(), FedAvgAggregator()
        pushes = [(mine, 3.0, "me"), (received(theirs), 5.0, "them")]
        if order == "mine last":
            pushes.reverse()
        for state, samples, who in pushes:
            direct.add_update(state, samples, who, float16_values=who == "me")
            wire.add_update(received(state) if who == "me" else state, samples, who)
        got, expected = direct.aggregate(), wire.aggregate()
        assert list(got) == list(expected)
        for key, value in expected.items():
            assert got[key].dtype == value.dtype, key
            np.testing.assert_array_equal(
                np.asarray(got[key], dtype=np.float64) if key != "brain" else got[key].float(),
                np.asarray(value, dtype=np.float64) if key != "brain" else value.float(),
                err_msg=f"{order}: {key}",
            )
    assert not np.array_equal(
        np.asarray(mine["conv.weight"]), np.asarray(received(mine)["conv.weight"])
    )
