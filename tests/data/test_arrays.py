import math

import hypothesis.extra.numpy as numpy_strategies
import numpy
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_diffusion.data.arrays import load_array, validate_data


@st.composite
def _finite_arrays(draw):
    dtype = numpy.dtype(draw(st.sampled_from(["float16", "float32", "float64", "int8", "int64", "uint8", "bool"])))
    shape = draw(numpy_strategies.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=5))
    elements = None
    if dtype.kind == "f":
        # Values within +-1e30 stay finite after conversion to float32.
        bound = float(dtype.type(min(1e30, float(numpy.finfo(dtype).max))))
        elements = st.floats(-bound, bound, width=8 * dtype.itemsize)
    return draw(numpy_strategies.arrays(dtype, shape, elements=elements))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=_finite_arrays())
def test_npy_round_trip(tmp_path, array):
    path = tmp_path / "data.npy"
    numpy.save(path, array)
    loaded = load_array(path)

    assert loaded.dtype == torch.float32
    assert tuple(loaded.shape) == array.shape
    numpy.testing.assert_array_equal(loaded.numpy(), array.astype(numpy.float32))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.int32, torch.uint8, torch.bool])
def test_pt_round_trip(tmp_path, dtype):
    tensor = (torch.arange(24).reshape(4, 3, 2) % 2).to(dtype)
    path = tmp_path / "data.pt"
    torch.save(tensor, path)
    loaded = load_array(path)

    assert loaded.dtype == torch.float32
    assert torch.equal(loaded, tensor.to(torch.float32))


def test_suffix_case_ignored(tmp_path):
    path = tmp_path / "DATA.NPY"
    with open(path, "wb") as file:
        numpy.save(file, numpy.ones((2, 3)))

    assert load_array(str(path)).shape == (2, 3)


def test_big_endian_npy(tmp_path):
    path = tmp_path / "data.npy"
    numpy.save(path, numpy.arange(6, dtype=">f8").reshape(3, 2))

    assert torch.equal(load_array(path), torch.arange(6, dtype=torch.float32).reshape(3, 2))


def test_missing_file_rejected(tmp_path):
    path = tmp_path / "absent.npy"

    with pytest.raises(ValueError, match=r"data file .*absent\.npy not found"):
        load_array(path)


def test_directory_rejected(tmp_path):
    path = tmp_path / "folder.npy"
    path.mkdir()

    with pytest.raises(ValueError, match="is not a file"):
        load_array(path)


@pytest.mark.parametrize("name", ["data.csv", "data.npz", "data.pth", "data"])
def test_unsupported_suffix_rejected(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"1,2\n3,4\n")

    with pytest.raises(ValueError, match=r"unsupported suffix.*allowed suffixes are \.npy, \.pt"):
        load_array(path)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
@pytest.mark.parametrize("content", [b"", b"not an array at all" * 10])
def test_corrupt_file_rejected(tmp_path, suffix, content):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)

    with pytest.raises(ValueError, match="failed to read"):
        load_array(path)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_truncated_file_rejected(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    if suffix == ".npy":
        numpy.save(path, numpy.zeros((100, 3)))
    else:
        torch.save(torch.zeros(100, 3), path)
    path.write_bytes(path.read_bytes()[:200])

    with pytest.raises(ValueError, match="failed to read"):
        load_array(path)


def test_pt_dict_rejected(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"x": torch.zeros(3, 2), "y": torch.zeros(3)}, path)

    with pytest.raises(ValueError, match=r"contains a dict with keys \['x', 'y'\], not a tensor"):
        load_array(path)


def test_npz_under_npy_name_rejected(tmp_path):
    path = tmp_path / "data.npy"
    with open(path, "wb") as file:
        numpy.savez(file, x=numpy.zeros((3, 2)))

    with pytest.raises(ValueError, match="not a single array"):
        load_array(path)


@pytest.mark.parametrize("shape", [(5,), ()])
def test_one_dimensional_rejected(tmp_path, shape):
    path = tmp_path / "data.npy"
    numpy.save(path, numpy.zeros(shape))

    with pytest.raises(ValueError, match=r"shape \[N, \.\.\.\]: add a feature axis, e\.g\. x\[:, None\]"):
        load_array(path)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_zero_examples_rejected(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    if suffix == ".npy":
        numpy.save(path, numpy.zeros((0, 3)))
    else:
        torch.save(torch.zeros(0, 3), path)

    with pytest.raises(ValueError, match="zero examples"):
        load_array(path)


def test_zero_features_rejected(tmp_path):
    path = tmp_path / "data.npy"
    numpy.save(path, numpy.zeros((4, 0)))

    with pytest.raises(ValueError, match="zero entries per example"):
        load_array(path)


@pytest.mark.parametrize(
    "array",
    [
        numpy.array([["a", "b"], ["c", "d"]]),
        numpy.zeros((2, 2), dtype=numpy.complex64),
        numpy.zeros((2, 2), dtype="datetime64[s]"),
        numpy.zeros((2, 2), dtype=[("a", numpy.float32), ("b", numpy.int32)]),
    ],
)
def test_npy_non_numeric_rejected(tmp_path, array):
    path = tmp_path / "data.npy"
    numpy.save(path, array)

    with pytest.raises(ValueError, match="non-numeric dtype"):
        load_array(path)


def test_npy_object_array_rejected(tmp_path):
    path = tmp_path / "data.npy"
    numpy.save(path, numpy.array([[{"a": 1}]], dtype=object), allow_pickle=True)

    with pytest.raises(ValueError, match="failed to read .*Object arrays"):
        load_array(path)


def test_pt_complex_rejected(tmp_path):
    path = tmp_path / "data.pt"
    torch.save(torch.zeros(3, 2, dtype=torch.complex64), path)

    with pytest.raises(ValueError, match="has dtype torch.complex64"):
        load_array(path)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_non_finite_values_reported(tmp_path, suffix):
    values = numpy.zeros((4, 3))
    values[2, 1] = math.nan
    values[3, 0] = math.inf
    values[3, 2] = math.nan
    path = tmp_path / f"data{suffix}"
    if suffix == ".npy":
        numpy.save(path, values)
    else:
        torch.save(torch.from_numpy(values), path)

    with pytest.raises(ValueError, match=r"3 non-finite values \(2 NaN, 1 infinite\), the first at index \(2, 1\)"):
        load_array(path)


def test_float32_overflow_reported(tmp_path):
    values = numpy.zeros((3, 2))
    values[1, 1] = 1e300
    path = tmp_path / "data.npy"
    numpy.save(path, values)

    with pytest.raises(ValueError, match=r"1 values beyond the float32 range.*index \(1, 1\)"):
        load_array(path)


def test_validate_data_returns_same_tensor():
    data = torch.randn(5, 2, dtype=torch.float64)

    assert validate_data(data) is data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (numpy.zeros((3, 2)), "is a ndarray, not a torch.Tensor"),
        (torch.zeros(3, 2, dtype=torch.long), "has dtype torch.int64 but a floating dtype"),
        (torch.zeros(3, 2, dtype=torch.complex64), "complex dtype"),
        (torch.zeros(3, 2).to_sparse(), "dense tensor"),
        (torch.zeros(3), r"shape \[N, \.\.\.\]: add a feature axis"),
        (torch.zeros(0, 2), "zero examples"),
        (torch.tensor([[0.0, math.inf]]), r"the first at index \(0, 1\)"),
    ],
)
def test_validate_data_rejects(data, message):
    with pytest.raises(ValueError, match=message):
        validate_data(data, name="x_train")


def test_validate_data_names_value():
    with pytest.raises(ValueError, match=r"^x_train has shape \[3\]"):
        validate_data(torch.zeros(3), name="x_train")
