"""wss:// with a certificate made in the test (trustme): an independent client that trusts only
the test CA connects, and rooms work as over ws://."""

from __future__ import annotations

import json
import ssl
import urllib.request

import pytest
import trustme

from helpers.ws_client import Member, close_all, open_ws, recv_binary, recv_type

pytestmark = pytest.mark.asyncio


@pytest.fixture
def tls_relay(relay, tmp_path):
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    # The chain (leaf first) in one file, the key in another, as an operator would install them.
    cert_path.write_bytes(b"".join(pem.bytes() for pem in certificate.cert_chain_pems))
    certificate.private_key_pem.write_to_path(str(key_path))
    server = relay("--tls-cert", str(cert_path), "--tls-key", str(key_path), tls=True)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    return server, context


async def test_rooms_over_wss(tls_relay):
    server, context = tls_relay
    assert server.url.startswith("wss://")
    alice = Member(await open_ws(server, ssl=context), "alice", "Alice")
    bob = Member(await open_ws(server, ssl=context), "bob", "Bob")
    code = (await alice.create())["room_code"]
    assert (await bob.join(code))["users"] == [alice.entry, bob.entry]
    await recv_type(alice.ws, "user_joined")
    payload = bytes(range(256)) * 4096  # 1 MiB through TLS
    await alice.ws.send(payload)
    assert await recv_binary(bob.ws) == payload
    await close_all([alice, bob])


def test_health_over_https(tls_relay):
    server, context = tls_relay
    with urllib.request.urlopen(server.http_url + "/health", context=context, timeout=5) as reply:
        assert reply.status == 200
        assert json.loads(reply.read())["status"] == "ok"


async def test_client_that_does_not_trust_the_certificate_is_refused(tls_relay):
    server, _ = tls_relay
    untrusting = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # system CAs only
    with pytest.raises(ssl.SSLCertVerificationError):
        await open_ws(server, ssl=untrusting)
    # The relay is unharmed by the failed handshake.
    _, context = tls_relay
    ws = await open_ws(server, ssl=context)
    await ws.close()
