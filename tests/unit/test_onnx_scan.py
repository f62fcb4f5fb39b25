"""The ONNX wire-format walk (shared/onnx_scan.py) against models the onnx package writes:
external data found wherever a tensor can live, the same answer however the bytes are cut
into chunks, and never an exception on bytes that are not a model."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from edgepub.shared.onnx_scan import OnnxScanner, Scan, describe, scan_bytes, scan_file


def _tensor(name: str, n: int, seed: int) -> TensorProto:
    w = np.random.default_rng(seed).standard_normal((n,), dtype=np.float32)
    return numpy_helper.from_array(w, name=name)


def model(
    initializers: int = 2,
    size: int = 64,
    *,
    constant: bool = False,
    subgraph: bool = False,
    sparse: bool = False,
) -> onnx.ModelProto:
    """y = x + W0 + W1 + ...; optionally a Constant node, an If with initializers in its
    branches, a sparse initializer: every place a tensor can hide."""
    inits = [_tensor(f"W{i}", size, i) for i in range(initializers)]
    nodes, prev = [], "x"
    for i in range(initializers):
        nodes.append(helper.make_node("Add", [prev, f"W{i}"], [f"s{i}"]))
        prev = f"s{i}"
    if constant:
        value = _tensor("c", size, 99)
        nodes.append(helper.make_node("Constant", [], ["c"], value=value))
        nodes.append(helper.make_node("Add", [prev, "c"], ["sc"]))
        prev = "sc"
    if subgraph:

        def branch(tag: str) -> onnx.GraphProto:
            return helper.make_graph(
                [helper.make_node("Add", [prev, f"B{tag}"], [f"o{tag}"])],
                f"branch{tag}",
                [],
                [helper.make_tensor_value_info(f"o{tag}", TensorProto.FLOAT, [size])],
                initializer=[_tensor(f"B{tag}", size, 50 + len(tag))],
            )

        inits.append(numpy_helper.from_array(np.array(True), name="cond"))
        nodes.append(
            helper.make_node(
                "If", ["cond"], ["sif"], then_branch=branch("t"), else_branch=branch("e")
            )
        )
        prev = "sif"
    sparse_inits = []
    if sparse:
        values = numpy_helper.from_array(np.ones(size // 2, dtype=np.float32), name="sp")
        indices = numpy_helper.from_array(np.arange(0, size, 2, dtype=np.int64), name="sp_i")
        sparse_inits.append(helper.make_sparse_tensor(values, indices, [size]))
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size])],
        initializer=inits,
        sparse_initializer=sparse_inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def all_tensors(m: onnx.ModelProto) -> list[TensorProto]:
    """Every tensor onnx knows of, sparse initializers' values and indices included."""
    out = list(external_data_helper._get_all_tensors(m))
    for sp in m.graph.sparse_initializer:
        out += [sp.values, sp.indices]
    return out


def externalised(m: onnx.ModelProto, names: set[str] | None = None) -> onnx.ModelProto:
    """``m`` with tensors (all, or those named) marked as kept in 'weights.bin'."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for tensor in all_tensors(out):
        if tensor.HasField("raw_data") and (names is None or tensor.name in names):
            external_data_helper.set_external_data(tensor, location="weights.bin")
            tensor.ClearField("raw_data")
    return out


def external_names(m: onnx.ModelProto) -> set[str]:
    return {t.name for t in all_tensors(m) if external_data_helper.uses_external_data(t)}


def in_chunks(data: bytes, cuts: list[int]) -> Scan:
    scanner = OnnxScanner()
    start = 0
    for cut in sorted(set(cuts)):
        scanner.feed(data[start:cut])
        start = cut
    scanner.feed(data[start:])
    return scanner.close()


def test_a_whole_model_is_fine() -> None:
    scan = scan_bytes(model().SerializeToString())
    assert scan.ok and scan == Scan()
    assert describe(scan, "m.onnx") == ""


@pytest.mark.parametrize(
    "kind", ["initializer", "constant", "subgraph", "sparse", "all"], ids=lambda k: k
)
def test_external_data_is_found_wherever_the_tensor_is(kind: str) -> None:
    m = model(constant=True, subgraph=True, sparse=True)
    names = {"initializer": {"W0"}, "constant": {"c"}, "subgraph": {"Bt"}, "sparse": {"sp"}}
    ext = externalised(m, names.get(kind))
    scan = scan_bytes(ext.SerializeToString())
    assert {t.name for t in scan.external} == external_names(ext)
    assert scan.external_count == len(external_names(ext)) > 0
    assert all(t.location == "weights.bin" for t in scan.external)
    assert not scan.ok and scan.problem is None


def test_the_message_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "big.onnx"
    onnx.save(
        model(3, 4096),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="big.onnx.data",
        size_threshold=0,
    )
    scan = scan_file(path)
    assert scan.external_count == 3
    text = describe(scan, str(path))
    assert "tensor 'W0' in 'big.onnx.data' and 2 more" in text
    assert "save_as_external_data=False" in text


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 4),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.data(),
)
def test_same_answer_as_onnx_in_any_chunking(
    inits: int, constant: bool, subgraph: bool, sparse: bool, data: st.DataObject
) -> None:
    m = model(inits, 16, constant=constant, subgraph=subgraph, sparse=sparse)
    all_names = sorted({t.name for t in all_tensors(m)})
    chosen = set(data.draw(st.lists(st.sampled_from(all_names), unique=True)))
    ext = externalised(m, chosen)
    raw = ext.SerializeToString()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    whole, parts = scan_bytes(raw), in_chunks(raw, cuts)
    assert whole == parts
    assert {t.name for t in whole.external} == external_names(ext)
    assert whole.problem is None


@settings(max_examples=200)
@given(st.binary(max_size=512))
def test_any_bytes_give_an_answer_never_an_exception(data: bytes) -> None:
    scan = scan_bytes(data)
    assert isinstance(scan, Scan)


@settings(max_examples=100)
@given(st.data())
def test_a_cut_or_damaged_model_is_not_a_model(data: st.DataObject) -> None:
    raw = model(2, 64).SerializeToString()
    cut = data.draw(st.integers(1, len(raw) - 1))
    truncated = scan_bytes(raw[:cut])
    # A cut between two top-level fields leaves a (smaller) well-formed message.
    assert truncated.problem is not None or truncated.external_count == 0
    assert scan_bytes(b"").problem == "it has no graph"


def test_not_a_model() -> None:
    assert scan_bytes(b"hello world, not protobuf").problem is not None
    assert scan_bytes(bytes(range(256))).problem is not None


def test_a_large_file_is_walked_without_reading_its_weights(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(model(2, 6 * 1024 * 1024), str(path))  # ~48 MB of weights
    read = 0

    class Counting(io.FileIO):
        def read(self, n: int = -1) -> bytes:
            nonlocal read
            chunk = super().read(n)
            read += len(chunk)
            return chunk

    from edgepub.shared import onnx_scan

    started = time.perf_counter()
    with Counting(str(path), "rb") as f:
        scan = onnx_scan.scan_stream(f)  # type: ignore[arg-type]
    assert scan.ok
    assert read < 4 * onnx_scan.CHUNK  # the headers, not the 48 MB
    assert time.perf_counter() - started < 1.0


# --- the SDK's check before an upload (sdk/model_file.py) -----------------------------------


def test_the_sdk_refuses_external_data_before_uploading(tmp_path: Path) -> None:
    from edgepub.model_file import inspect_onnx
    from edgepub.shared.errors import InvalidModelError, ModelExternalDataError

    whole, split = tmp_path / "whole.onnx", tmp_path / "split.onnx"
    m = model(2, 1024)
    onnx.save(m, str(whole))
    onnx.save(m, str(split), save_as_external_data=True, location="split.data", size_threshold=0)
    inputs, outputs = inspect_onnx(whole)
    assert [(s.name, s.dtype, s.shape) for s in inputs] == [("x", "float32", (1024,))]
    assert [s.name for s in outputs] == ["y"]
    # onnxruntime itself loads split.onnx happily (split.data is right beside it).
    with pytest.raises(ModelExternalDataError, match="save_as_external_data=False") as err:
        inspect_onnx(split)
    assert isinstance(err.value, InvalidModelError) and err.value.code == "model_external_data"
    assert "'split.data'" in str(err.value)


def test_the_sdk_refuses_outputs_that_are_not_tensors(tmp_path: Path) -> None:
    from edgepub.model_file import inspect_onnx
    from edgepub.shared.errors import InvalidModelError

    seq = helper.make_tensor_sequence_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [seq],
    )
    path = tmp_path / "seq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(InvalidModelError, match=r"output 'y' is seq\(tensor\(float\)\), not a"):
        inspect_onnx(path)
