"""Plain HTTP requests to the relay, and its /metrics parsed by the Prometheus client library."""

from __future__ import annotations

import http.client

from prometheus_client.parser import text_string_to_metric_families

from helpers.relay_process import SLOWDOWN, RelayProcess


def request(relay: RelayProcess, method: str, path: str, headers: dict | None = None):
    """One HTTP request; returns (status, headers, body bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=5 * SLOWDOWN)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def scrape(relay: RelayProcess, headers: dict | None = None) -> dict[str, float]:
    """GET /metrics: {'name' or 'name{label=value,...}': value}."""
    status, response_headers, body = request(relay, "GET", "/metrics", headers)
    assert status == 200, status
    assert response_headers["Content-Type"].split(";")[0].strip() == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
