"""A malicious model owner never gets a co-batched tenant's row back, end to end.

The owner's graphs (tests/adversarial/owner_models.py) mix the rows of a batch
or return more rows than they were given. The attacker's own tenant and the
victim send at the same moment through a real worker; the attacker must get
exactly what the graph computes on the attacker's rows alone, never the
victim's values. A control first forces the worker to trust the graph, to show
the attack does take the victim's row when rows are mixed, so the defended
runs prove something. A proven row-independent graph still batches tenants
together, and one tenant's failing row fails only that tenant's request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import numpy as np
import pytest

from infaas.attestation import SimulatedPlatformCA
from infaas.errors import InferenceFailed, OutputContractViolated
from tests.adversarial.owner_models import (
    ATTACKER,
    BYSTANDER,
    FEATURES,
    TABLE,
    VICTIM,
    opened,
    owner_deployment,
    run_alone,
    send_together,
    variant,
    warm,
)
from tests.deployment import Deployment
from variants.row_independence import RowIndependence

MIXING = ["rotate", "gram"]


@pytest.fixture(scope="module")
def dep(
    platform_ca: SimulatedPlatformCA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    deployment = owner_deployment(platform_ca, tmp_path_factory.mktemp("batch-isolation"))
    verdicts = warm(deployment, deployment.runtime, [*MIXING, "lookup"])
    assert verdicts["lookup"].proven, verdicts["lookup"].reason
    yield deployment
    deployment.close()


def _rows(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    attacker = np.eye(FEATURES, dtype=np.float32)[:1]  # a probe row: e1
    victim = (rng.normal(size=(1, FEATURES)) * 100).astype(np.float32)
    return attacker, victim


def test_the_worker_does_not_trust_mixing_graphs_with_two_tenants(dep: Deployment) -> None:
    for model in MIXING:
        verdict = dep.runtime.host.proofs[variant(model)].result(timeout=60)
        assert not verdict.proven, (model, verdict.reason)


@pytest.mark.parametrize("model", MIXING)
def test_control_a_trusted_mixing_graph_hands_the_victims_row_to_the_attacker(
    dep: Deployment, model: str
) -> None:
    """The attack works when the worker mixes tenants: what the defended test rules out."""
    worker = dep.new_worker(batch_wait_ms=200.0)
    try:
        warm(dep, worker, [model])

        async def trust() -> None:
            async with worker.host.packer.use(variant(model)) as loaded:
                loaded.rows = RowIndependence(True, "forced by the test's control")

        asyncio.run(trust())
        attacker, victim = _rows(1)
        (a_sent, a_answer), _ = send_together(
            dep, worker, [(ATTACKER, model, attacker), (VICTIM, model, victim)]
        )
        got = opened(dep, a_sent, a_answer)
        assert a_answer.batch_size == 2  # type: ignore[union-attr]
        assert not np.allclose(got, run_alone(model, attacker))
        both = np.concatenate([attacker, victim])
        np.testing.assert_allclose(got, run_alone(model, both)[:1], rtol=1e-5)
        if model == "rotate":  # the victim's row, verbatim
            np.testing.assert_array_equal(got, victim)
    finally:
        asyncio.run(worker.close())


@pytest.mark.parametrize("model", MIXING)
def test_the_attacker_gets_only_what_its_own_rows_give(dep: Deployment, model: str) -> None:
    attacker, victim = _rows(2)
    (a_sent, a_answer), (v_sent, v_answer) = send_together(
        dep, dep.runtime, [(ATTACKER, model, attacker), (VICTIM, model, victim)]
    )
    got = opened(dep, a_sent, a_answer)
    np.testing.assert_array_equal(got, run_alone(model, attacker))
    assert not np.isin(victim, got).any()
    np.testing.assert_array_equal(opened(dep, v_sent, v_answer), run_alone(model, victim))
    assert a_answer.batch_size == 1 and v_answer.batch_size == 1  # type: ignore[union-attr]


def test_a_graph_lying_about_its_shapes_is_not_trusted(dep: Deployment) -> None:
    """The owner's value_info hides a row swap: the worker must not batch tenants on it."""
    both = np.concatenate(_rows(5))
    np.testing.assert_array_equal(run_alone("lying-swap", both)[0], both[1])  # it does swap
    verdict = warm(dep, dep.runtime, ["lying-swap"])["lying-swap"]
    assert not verdict.proven, verdict.reason
    attacker, victim = _rows(5)
    (_, a_answer), _ = send_together(
        dep, dep.runtime, [(ATTACKER, "lying-swap", attacker), (VICTIM, "lying-swap", victim)]
    )
    # alone, a single row cannot be paired: the attacker gets an error, never the victim's row
    assert isinstance(a_answer, InferenceFailed), a_answer


def test_one_tenants_requests_still_share_a_batch_on_an_unproven_graph(dep: Deployment) -> None:
    first, second = _rows(3)[1], _rows(4)[1]
    answers = send_together(
        dep, dep.runtime, [(VICTIM, "rotate", first), (VICTIM, "rotate", second)]
    )
    assert [a.batch_size for _, a in answers] == [2, 2]  # type: ignore[union-attr]
    # rotated within the victim's own batch: its own rows, nobody else's
    assert np.array_equal(opened(dep, *answers[0]), second)


def test_a_proven_graph_batches_tenants_together(dep: Deployment) -> None:
    rows = {VICTIM: 3, BYSTANDER: 7}
    sends = [(t, "lookup", np.array([[k, 0, 0, 0]], np.float32)) for t, k in rows.items()]
    answers = send_together(dep, dep.runtime, sends)
    for (sent, answer), k in zip(answers, rows.values(), strict=True):
        np.testing.assert_array_equal(opened(dep, sent, answer), TABLE[k : k + 1])
        assert answer.batch_size == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("model", ["extra-row", "float64"])
def test_an_output_contract_violation_returns_no_rows(dep: Deployment, model: str) -> None:
    attacker, victim = _rows(5)
    answers = send_together(
        dep, dep.runtime, [(ATTACKER, model, attacker), (VICTIM, model, victim)]
    )
    for _, answer in answers:
        assert isinstance(answer, OutputContractViolated), answer
        assert answer.status_code == 502


def test_a_failing_row_fails_only_its_own_request(
    dep: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    honest = np.array([[3, 0, 0, 0]], np.float32)
    out_of_range = np.array([[987654, 0, 0, 0]], np.float32)
    with caplog.at_level(logging.WARNING, logger="infaas.enclave_workers.batcher"):
        (_, b_answer), (v_sent, v_answer) = send_together(
            dep, dep.runtime, [(BYSTANDER, "lookup", out_of_range), (VICTIM, "lookup", honest)]
        )
    assert isinstance(b_answer, InferenceFailed), b_answer
    np.testing.assert_array_equal(opened(dep, v_sent, v_answer), TABLE[3:4])
    # they did share the run that failed: the victim was served by running alone after it
    assert "batch of 2 failed: InferenceFailed" in caplog.text
