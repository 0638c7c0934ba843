"""A member's requests through a real relay: `request_global_model` and the host's answer to
`request_model`, and `send_training_data` (our framed crop) between two of our clients; the
LAN server's answer to `request_model` after `set_global_weights`.

All clients are SyncClients in the test process; the relay is ours or the v1 fixture. What a
receiver gets is compared with what was sent (arrays, PNG pixels decoded with Pillow).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from test_api_rooms import make_client

from segmentation_suite.network import AggregationServer

TIMEOUT = 30


def layout(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.normal(size=(8,)).astype(np.float32),
    }


def open_room(recorder, url: str, names: list[str]):
    """An open room created by `names[0]`, joined by the others; returns the clients."""
    host = make_client(recorder, names[0])
    host.create_relay_room(names[0], url, private=False)
    (code,) = recorder.wait_for(lambda: recorder.of(names[0], "room_created"), TIMEOUT, "room")[0]
    clients = [host]
    for name in names[1:]:
        member = make_client(recorder, name)
        member.connect_relay(code, name, url)
        recorder.wait_for(lambda n=name: recorder.of(n, "room_joined"), TIMEOUT, f"{name} joins")
        clients.append(member)
    everyone = set(names)
    for client in clients:
        recorder.wait_for(
            lambda c=client: (
                {u["display_name"] for u in c.users} == everyone and c.host_id == host.user_id
            ),
            TIMEOUT,
            "everyone in the room knows the host",
        )
    return clients


def test_request_global_model_is_answered_to_the_asker_only(any_relay, recorder):
    _, url, _ = any_relay
    host, ann, lee = open_room(recorder, url, ["host", "ann", "lee"])
    asked: list[str] = []
    host.model_requested.connect(asked.append)

    # Before any round the host has nothing to send: it hears the request all the same.
    lee.request_global_model()
    recorder.wait_for(lambda: asked == [lee.user_id], TIMEOUT, "the host hears lee")

    sent = layout(1)
    ann.send_weights(sent, epoch=1, loss=0.5, num_samples=4)
    recorder.wait_for(lambda: recorder.of("host", "weights_received"), TIMEOUT, "ann's push")
    assert host.trigger_aggregation()  # the round would wait for lee's push too
    for name in ("ann", "lee"):
        recorder.wait_for(lambda n=name: recorder.of(n, "global"), TIMEOUT, f"{name}'s global")
    assert len(recorder.of("ann", "global")) == 1 and len(recorder.of("lee", "global")) == 1

    lee.request_global_model()
    recorder.wait_for(lambda: len(recorder.of("lee", "global")) == 2, TIMEOUT, "the answer")
    assert asked == [lee.user_id, lee.user_id]
    (answer,) = recorder.of("lee", "global")[1]
    for name, value in sent.items():  # float16 on the wire
        np.testing.assert_allclose(answer[name], value, rtol=2**-10, atol=1e-3)
    assert lee.aggregation_round == host.aggregation_round == 1
    # ann did not ask: the answer is directed (on a v1 relay, ann drops what is not hers)
    with pytest.raises(AssertionError):
        recorder.wait_for(lambda: len(recorder.of("ann", "global")) > 1, 2, "no second global")
    assert not recorder.of("ann", "error") and not recorder.of("lee", "error")


def test_a_training_crop_reaches_the_host_as_the_pixels_sent(any_relay, recorder):
    _, url, _ = any_relay
    host, ann, lee = open_room(recorder, url, ["host", "ann", "lee"])
    crops: dict[str, list] = {"host": [], "lee": []}
    host.training_data_received.connect(lambda *args: crops["host"].append(args))
    lee.training_data_received.connect(lambda *args: crops["lee"].append(args))
    image = np.arange(48 * 40, dtype=np.uint16).reshape(48, 40) * 7
    mask = np.zeros((48, 40), bool)
    mask[10:20, 5:30] = True

    future = ann.send_training_data(image, mask, slice_index=11)
    assert future is not None and future.result(TIMEOUT) is None
    recorder.wait_for(lambda: crops["host"], TIMEOUT, "the crop")
    ((image_png, mask_png, info),) = crops["host"]
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image_png))), image)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(mask_png))), mask * 255)
    assert info["sender_id"] == ann.user_id and info["user_id"] == ann.user_id
    assert info["slice_index"] == 11 and info["crop_size"] == 48
    # a crop is for the host: another member never sees it
    with pytest.raises(AssertionError):
        recorder.wait_for(lambda: crops["lee"], 2, "no crop at lee")
    assert not recorder.of("host", "error")


def test_the_lan_server_answers_request_model_with_the_weights_it_was_given(recorder):
    server = AggregationServer()
    server.error.connect(recorder.record("server", "error"))
    assert server.start(port=0) is not None, recorder.events
    try:
        member = make_client(recorder, "ann")
        member.connect_direct("127.0.0.1", server.port, "ann")
        recorder.wait_for(lambda: recorder.of("ann", "connected"), TIMEOUT, "ann is welcomed")
        start = layout(2)
        server.set_global_weights(start)
        member.request_global_model()
        (got,) = recorder.wait_for(lambda: recorder.of("ann", "global"), TIMEOUT, "answer")[0]
        for name, value in start.items():
            np.testing.assert_allclose(got[name], value, rtol=2**-10, atol=1e-3)
        server.broadcast_global_model()
        recorder.wait_for(lambda: len(recorder.of("ann", "global")) == 2, TIMEOUT, "broadcast")
        assert not recorder.of("server", "error") and not recorder.of("ann", "error")
    finally:
        server.stop()
