"""The real app (create_app) carries the operators' surface: probes, metrics, leases, dashboard,
request ids; and generation feeds the metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import ADMIN, SECRETS, Api, flux


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_probes_metrics_and_request_ids(api: Api) -> None:
    assert (await api.get("/livez")).json() == {"status": "alive"}
    assert (await api.get("/readyz")).status_code == 200
    response = await api.post("/generate", json=flux(), headers={**ADMIN, "X-Request-ID": "abc-1"})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "abc-1"
    assert "X-Request-ID" in (await api.get("/health")).headers
    text = (await api.get("/metrics")).text
    found = samples(text)
    assert found[("generations_total", (("model", "flux-dev"), ("outcome", "succeeded")))] == 1
    created = [v for (name, labels), v in found.items() if name == "upstream_requests_total"]
    assert sum(created) >= 1
    assert any(name == "semaphore_wait_seconds_count" for name, _ in found)
    for secret in SECRETS:
        assert secret not in text


async def test_readyz_fails_while_draining(api: Api) -> None:
    api.app.state.draining = True
    response = await api.get("/readyz")
    assert response.status_code == 503
    assert "draining" in response.text


async def test_lease_api_and_dashboard_are_mounted(api: Api) -> None:
    created = await api.post(
        "/global-semaphores", json={"semaphore_id": "shared", "limit": 1}, headers=ADMIN
    )
    assert created.status_code == 201
    lease = await api.post("/global-semaphores/shared/leases", json={"timeout_s": 1}, headers=ADMIN)
    assert lease.status_code == 201, lease.text
    lease_id = lease.json()["lease_id"]
    view = (await api.get("/global-semaphores/shared")).json()
    assert view["in_use"] == 1
    assert (await api.get("/dashboard")).status_code == 200
    released = await api.delete(f"/global-semaphores/shared/leases/{lease_id}", headers=ADMIN)
    assert released.json() == {"released": True}
