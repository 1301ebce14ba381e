"""SteeringVector / SteeringSet: arithmetic, persistence, and bad-input errors."""

import pytest
import torch

from hooksteer import SteeringFileError, SteeringSet, SteeringVector

SITE = "blocks.1.hook_resid_post"


def make(values, site=SITE, **kwargs):
    return SteeringVector(site, torch.tensor(values, dtype=torch.float32), **kwargs)


def test_arithmetic_and_metadata():
    a, b = make([1.0, 2.0]), make([3.0, -1.0])
    assert torch.equal((a + b).vector, torch.tensor([4.0, 1.0]))
    assert torch.equal((a - b).vector, torch.tensor([-2.0, 3.0]))
    assert torch.equal((2 * a).vector, torch.tensor([2.0, 4.0]))
    assert torch.equal((a * 2).vector, (2 * a).vector)
    assert torch.equal((-a).vector, torch.tensor([-1.0, -2.0]))
    assert torch.equal((a / 2).vector, torch.tensor([0.5, 1.0]))
    assert a.layer == 1 and a.d_model == 2
    assert make([3.0, 4.0]).unit().norm() == pytest.approx(1.0)
    assert a.cosine_similarity(2 * a) == pytest.approx(1.0)
    assert a.cosine_similarity(-a) == pytest.approx(-1.0)


def test_adding_vectors_at_different_sites_points_to_steering_set():
    with pytest.raises(ValueError, match="SteeringSet"):
        make([1.0, 2.0]) + make([1.0, 2.0], site="blocks.2.hook_resid_post")


def test_steering_set_sums_per_site():
    s = SteeringSet([make([1.0, 0.0]), make([0.0, 1.0]), make([5.0, 5.0], site="blocks.0.hook_resid_pre")])
    summed = (s * 2.0).by_hook()
    assert torch.equal(summed[SITE], torch.tensor([2.0, 2.0]))
    assert torch.equal(summed["blocks.0.hook_resid_pre"], torch.tensor([10.0, 10.0]))


def test_save_load_round_trip_is_bit_exact(tmp_path):
    v = SteeringVector(SITE, torch.randn(16, generator=torch.Generator().manual_seed(0)), method="diffmean",
                       source={"positive": ["I love it"], "layer": 1})
    path = v.save(tmp_path / "v.safetensors")
    loaded = SteeringVector.load(path)
    assert torch.equal(loaded.vector, v.vector) and loaded.vector.dtype == v.vector.dtype
    assert (loaded.hook_name, loaded.method, loaded.source) == (v.hook_name, v.method, v.source)

    s = SteeringSet([v, make([1.0] * 16, site="blocks.0.hook_resid_pre")])
    s.save(tmp_path / "s.safetensors")
    loaded_set = SteeringSet.load(tmp_path / "s.safetensors")
    assert [x.hook_name for x in loaded_set] == [x.hook_name for x in s]
    assert all(torch.equal(x.vector, y.vector) for x, y in zip(loaded_set, s, strict=True))


def test_loading_for_wrong_d_model_fails_clearly(tmp_path):
    path = make([1.0, 2.0, 3.0]).save(tmp_path / "v.safetensors")
    with pytest.raises(SteeringFileError, match="d_model=576.*another model"):
        SteeringVector.load(path, d_model=576)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_files_raise_clear_errors(tmp_path, damage):
    path = make([1.0, 2.0, 3.0]).save(tmp_path / "v.safetensors")
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) - 5], "garbage": b"\x00garbage" * 10, "empty": b""}[damage])
    with pytest.raises(SteeringFileError, match="corrupt or truncated"):
        SteeringVector.load(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(SteeringFileError, match="no steering file"):
        SteeringVector.load(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SteeringFileError, match="not a hooksteer steering file"):
        SteeringVector.load(tmp_path / "other.safetensors")


@pytest.mark.parametrize(
    "values, error, match",
    [
        ([float("nan"), 1.0], ValueError, "NaN/inf"),
        ([float("inf"), 1.0], ValueError, "NaN/inf"),
        ([[1.0, 2.0]], ValueError, "1-D"),
        ([], ValueError, "empty"),
    ],
)
def test_bad_vectors_rejected(values, error, match):
    with pytest.raises(error, match=match):
        make(values)


def test_integer_vector_rejected_and_bad_scaling():
    with pytest.raises(TypeError, match="floating-point"):
        SteeringVector(SITE, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="cannot scale"):
        make([1.0]) * float("nan")
    with pytest.raises(ValueError, match="zero vector"):
        make([0.0, 0.0]).unit()
