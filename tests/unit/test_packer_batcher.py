"""The worker's model packer (LRU under a memory budget) and cross-tenant batcher."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from enclave_workers.batcher import DynamicBatcher, batch_limit
from enclave_workers.packer import ModelPacker, check_outputs
from infaas.errors import OutputContractViolated, Overloaded, PayloadTooLarge
from infaas.types import LatencyModel


def _packer(budget: int, sizes: dict[str, int], calls: list[str]) -> ModelPacker[str]:
    async def load(vid: str) -> tuple[str, int]:
        calls.append(vid)
        await asyncio.sleep(0.01)
        return f"session:{vid}", sizes[vid]

    return ModelPacker(budget_bytes=budget, load=load)


def test_packer_evicts_least_recently_used() -> None:
    calls: list[str] = []
    packer = _packer(100, {"a": 40, "b": 40, "c": 40}, calls)

    async def go() -> None:
        for vid in ["a", "b", "a", "c"]:
            async with packer.use(vid) as s:
                assert s == f"session:{vid}"

    asyncio.run(go())
    assert calls == ["a", "b", "c"]
    stats = packer.stats()
    assert stats.loaded == ("a", "c") and stats.evictions == 1
    assert stats.used_bytes <= stats.budget_bytes


def test_preloaded_variant_is_a_hit_and_fits_the_budget() -> None:
    calls: list[str] = []
    packer = _packer(100, {"a": 40, "b": 40, "c": 40}, calls)
    assert packer.put("a", "session:a", 40)
    assert not packer.put("a", "other", 40)  # loaded already: kept as it is
    assert packer.put("b", "session:b", 40)
    assert not packer.put("huge", "x", 500)  # can never fit: refused, nothing evicted
    assert packer.stats().loaded == ("a", "b")

    async def go() -> None:
        async with packer.use("a") as s:  # no load: the pre-loaded session
            assert s == "session:a"

    asyncio.run(go())
    assert calls == []
    assert packer.put("c", "session:c", 40)  # room made from the coldest (b)
    assert packer.stats().loaded == ("a", "c")


def test_concurrent_loads_of_one_variant_share_one_load() -> None:
    calls: list[str] = []
    packer = _packer(100, {"a": 10}, calls)

    async def one() -> str:
        async with packer.use("a") as s:
            return s

    async def go() -> list[str]:
        return list(await asyncio.gather(*[one() for _ in range(5)]))

    assert asyncio.run(go()) == ["session:a"] * 5
    assert calls == ["a"]


def test_variant_in_use_is_never_evicted() -> None:
    packer = _packer(100, {"a": 60, "b": 60}, [])

    async def go() -> None:
        async with packer.use("a"):
            with pytest.raises(Overloaded, match="busy"):
                async with packer.use("b"):
                    pass
        async with packer.use("b"):
            assert not packer.is_loaded("a")

    asyncio.run(go())


def test_variant_larger_than_budget_is_refused() -> None:
    packer = _packer(100, {"huge": 1000}, [])

    async def go() -> None:
        async with packer.use("huge"):
            pass

    with pytest.raises(PayloadTooLarge, match="cannot fit"):
        asyncio.run(go())


def test_batch_limit_follows_latency_model() -> None:
    model = LatencyModel(intercept_ms=2.0, slope_ms=1.0)
    assert batch_limit(model, budget_ms=10.0, max_batch=32) == 8
    assert batch_limit(model, budget_ms=1.0, max_batch=32) == 1
    assert batch_limit(model, budget_ms=1000.0, max_batch=32) == 32


def test_batcher_joins_tenants_and_returns_each_its_rows() -> None:
    seen: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        seen.append(int(x.shape[0]))
        return x * 2

    async def go() -> list[np.ndarray]:
        with ThreadPoolExecutor(1) as pool:
            b = DynamicBatcher(run=run, executor=pool, max_batch=8, max_wait_ms=50)
            inputs = [np.full((1, 3), i, np.float32) for i in range(6)]
            outs = await asyncio.gather(*[b.submit(x) for x in inputs])
            await b.close()
            return list(outs)

    outs = asyncio.run(go())
    for i, y in enumerate(outs):
        np.testing.assert_array_equal(y, np.full((1, 3), 2 * i, np.float32))
    assert sum(seen) == 6 and max(seen) > 1


def test_tightest_limit_bounds_the_batch() -> None:
    seen: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        seen.append(int(x.shape[0]))
        return x

    async def go() -> None:
        with ThreadPoolExecutor(1) as pool:
            b = DynamicBatcher(run=run, executor=pool, max_batch=32, max_wait_ms=50)
            tasks = [b.submit(np.zeros((1, 2)), limit=2)] + [
                b.submit(np.zeros((1, 2)), limit=32) for _ in range(5)
            ]
            await asyncio.gather(*tasks)
            await b.close()

    asyncio.run(go())
    assert seen[0] <= 2 and sum(seen) == 6


def test_a_failing_batch_fails_only_its_requests() -> None:
    def run(x: np.ndarray) -> np.ndarray:
        if np.any(x < 0):
            raise ValueError("bad batch")
        return x

    async def go() -> None:
        with ThreadPoolExecutor(1) as pool:
            b = DynamicBatcher(run=run, executor=pool, max_batch=1, max_wait_ms=1)
            bad = b.submit(-np.ones((1, 2)))
            good = b.submit(np.ones((1, 2)))
            results = await asyncio.gather(bad, good, return_exceptions=True)
            assert isinstance(results[0], ValueError)
            assert isinstance(results[1], np.ndarray)
            await b.close()

    asyncio.run(go())


def _tenant_batches(mixes: bool) -> tuple[list[list[str]], dict[str, np.ndarray]]:
    """Six single-row requests of three tenants, interleaved; the tenants of each batch."""
    batches: list[list[str]] = []

    def run(x: np.ndarray) -> np.ndarray:
        batches.append([f"t{int(v)}" for v in x[:, 0]])
        return x + 100

    async def go() -> dict[str, np.ndarray]:
        with ThreadPoolExecutor(1) as pool:
            b = DynamicBatcher(
                run=run, executor=pool, max_batch=8, max_wait_ms=50, mixes_tenants=lambda: mixes
            )
            sends = [(f"t{i % 3}", np.full((1, 2), i % 3, np.float32)) for i in range(6)]
            outs = await asyncio.gather(*[b.submit(x, tenant=t) for t, x in sends])
            await b.close()
            return {f"{t}#{i}": y for i, ((t, _), y) in enumerate(zip(sends, outs, strict=True))}

    return batches, asyncio.run(go())


def test_an_unproven_variant_batches_each_tenant_alone() -> None:
    batches, outs = _tenant_batches(mixes=False)
    assert all(len(set(b)) == 1 for b in batches), batches
    assert sorted(t for b in batches for t in b) == ["t0", "t0", "t1", "t1", "t2", "t2"]
    assert max(len(b) for b in batches) == 2  # one tenant's requests still share a batch
    assert [b[0] for b in batches] == ["t0", "t1", "t2"]  # heads in arrival order
    for key, y in outs.items():
        np.testing.assert_array_equal(y, np.full((1, 2), int(key[1]) + 100, np.float32))


def test_a_proven_variant_batches_tenants_together() -> None:
    batches, _ = _tenant_batches(mixes=True)
    assert max(len(set(b)) for b in batches) == 3


def test_a_failed_batch_reruns_each_request_alone() -> None:
    calls: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        calls.append(int(x.shape[0]))
        if np.any(x < 0):
            raise ValueError("a bad row")
        return x

    async def go() -> list[object]:
        with ThreadPoolExecutor(1) as pool:
            b = DynamicBatcher(
                run=run, executor=pool, max_batch=8, max_wait_ms=50, mixes_tenants=lambda: True
            )
            sends = [
                b.submit(np.full((1, 2), v), tenant=t) for t, v in [("a", 1), ("b", -1), ("c", 2)]
            ]
            results = await asyncio.gather(*sends, return_exceptions=True)
            await b.close()
            return list(results)

    good_a, bad, good_c = asyncio.run(go())
    assert isinstance(bad, ValueError)
    np.testing.assert_array_equal(good_a, np.full((1, 2), 1))
    np.testing.assert_array_equal(good_c, np.full((1, 2), 2))
    assert calls == [3, 1, 1, 1]


def _shape_from_value_graph() -> bytes:
    """An owner's graph whose output is (1, x[0, 0]) zeros: its shape is a tenant's value."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Slice", ["x", "z", "one", "z"], ["first"]),
        helper.make_node("Slice", ["first", "z", "one", "one"], ["v"]),
        helper.make_node("Reshape", ["v", "one"], ["vf"]),
        helper.make_node("Cast", ["vf"], ["vi"], to=TensorProto.INT64),
        helper.make_node("Concat", ["one", "vi"], ["shape"], axis=0),
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["y"],
            value=numpy_helper.from_array(np.zeros(1, np.float32)),
        ),
    ]
    inits = [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("z", 0), ("one", 1))]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model).SerializeToString()


def test_a_value_dependent_output_shape_never_reaches_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from variants._telemetry import onnxruntime

    ort = onnxruntime()
    sess = ort.InferenceSession(_shape_from_value_graph(), providers=["CPUExecutionProvider"])
    secret = 4817
    out = np.asarray(sess.run(None, {"x": np.array([[secret, 0, 0, 0]], np.float32)})[0])
    assert out.shape == (1, secret)  # the graph really encodes the value in the shape
    with (
        caplog.at_level(logging.DEBUG),
        pytest.raises(OutputContractViolated) as raised,
    ):
        check_outputs("mallory.fp32.onnxruntime", out, 1, 10)
    assert "broke the output contract: width" in caplog.text
    for text in (caplog.text, str(raised.value)):
        assert str(secret) not in text
