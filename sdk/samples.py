"""Sample ONNX models made on the spot (demo, tests, benches): nothing is downloaded.

``house_price_model`` trains a small scikit-learn forest on synthetic data and converts it
with skl2onnx (needs the ``demo`` extra). ``dense_model`` builds an MLP of a chosen size
with onnx helpers, for size-bound measurements.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_FEATURES = 18


def house_price_model(
    path: Path, *, n_features: int = N_FEATURES, n_estimators: int = 20, seed: int = 0
) -> Path:
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(500, n_features)).astype(np.float32)
    y = x @ rng.normal(size=n_features) + rng.normal(scale=0.1, size=500)
    model = RandomForestRegressor(n_estimators=n_estimators, max_depth=6, random_state=seed)
    model.fit(x, y)
    onx = to_onnx(model, x[:1], target_opset=17)
    path.write_bytes(onx.SerializeToString())
    return path


def dense_model(path: Path, *, size_mb: float, n_features: int = N_FEATURES, seed: int = 0) -> Path:
    """input[N, n_features] -> MatMul -> Relu -> MatMul (the big one) -> MatMul -> output[N, 1]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    hidden = 256
    wide = max(1, int(size_mb * 1024 * 1024 / 4 / hidden))
    weights = {
        "w1": rng.normal(size=(n_features, hidden)).astype(np.float32),
        "w2": rng.normal(size=(hidden, wide)).astype(np.float32),
        "w3": rng.normal(size=(wide, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w3"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path
