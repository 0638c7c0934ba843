"""Mixed rooms: members on the original app next to ours, on our relay and on the v1 fixture.

The original member is tests/helpers/original_client.py, an emulator written from the
protocol documents (its sources are listed there): it speaks only the original format and
asserts that every binary it receives is gzip or PNG, never our `SSBF` frames. Expected
values are computed here from the states each side sent (rounded to float16, as both
formats carry them), never taken from the code under test.
"""

from __future__ import annotations

import gzip
import io
import multiprocessing
import pickle
import time
import zlib

import numpy as np
import pytest
import torch
from members import big_layout, layout_state
from PIL import Image
from test_api_rooms import make_client

from helpers.original_client import OriginalClient
from helpers.relay_process import SLOWDOWN
from helpers.v1_relay_process import V1Relay

TIMEOUT = 60.0 * SLOWDOWN
SMALL = [
    {"name": "conv.weight", "shape": [8, 4, 3, 3], "dtype": "float32"},
    {"name": "conv.bias", "shape": [8], "dtype": "float32"},
]
BIG = big_layout(48)  # 24 MB as float16: the original format chunks it (16 MiB chunks)


def half(state: dict) -> dict:
    """What a state looks like after travelling as float16 (both formats do that)."""
    return {k: np.asarray(v, dtype=np.float16).astype(np.float64) for k, v in state.items()}


def as_numpy(state: dict) -> dict:
    return {
        k: (v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)).astype(np.float64)
        for k, v in state.items()
    }


def assert_state_close(got: dict, expected: dict, atol: float = 2e-3) -> None:
    got = as_numpy(got)
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=2e-3, atol=atol, err_msg=name)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def crop_arrays(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    mask = (rng.random((16, 16)) > 0.5).astype(np.uint8) * 255
    return image, mask


def decoded_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


@pytest.fixture
def originals():
    started: list[OriginalClient] = []

    def start(url: str, name: str) -> OriginalClient:
        client = OriginalClient(url, name)
        started.append(client)
        return client

    yield start
    for client in started:
        client.close()


def wait_until(recorder, predicate, what: str):
    return recorder.wait_for(predicate, TIMEOUT, what)


def join(recorder, name: str, code: str, url: str, **options):
    client = make_client(recorder, name, **options)
    client.connect_relay(code, name, url)
    wait_until(recorder, lambda: recorder.of(name, "room_joined"), f"{name} joins")
    return client


def speaks_frames(client, other) -> bool:
    return client._session.mixed.kinds.speaks_frames(other.user_id)


def open_mixed_room(recorder, originals, url: str, host):
    """`host` opens a room that an original member (Olga) and one of ours (Mia) join; returns
    (olga, mia) once the host knows which of them speaks frames and Mia knows the host."""
    host.create_relay_room("host", url, private=False)
    (code,) = wait_until(recorder, lambda: recorder.of("host", "room_created"), "room")[0]
    olga = originals(url, "Olga")
    olga.join_room(code)
    # On the v1 relay every binary reaches everyone, in the original format: ours opt in too.
    mia = join(recorder, "mia", code, url, accept_legacy_weights=True)
    wait_until(recorder, lambda: len(host.users) == 3 and speaks_frames(host, mia), "kinds")
    wait_until(recorder, lambda: mia.host_id == host.user_id, "mia knows the host")
    return olga, mia


# --- must-show 1 and 5: both roles, both directions, small and chunked -------------------


@pytest.mark.parametrize("layout", [SMALL, BIG], ids=["small", "chunked"])
def test_ours_host_averages_an_original_members_push_with_ours(
    any_relay, recorder, originals, layout
):
    kind, url, _ = any_relay
    host = make_client(recorder, "host", accept_legacy_weights=True, aggregation_timeout=120)
    crops: list = []
    host.training_data_received.connect(lambda image, mask, info: crops.append((image, mask, info)))
    olga, mia = open_mixed_room(recorder, originals, url, host)
    assert not speaks_frames(host, olga) and not speaks_frames(mia, olga)

    states = {name: layout_state(seed, layout) for seed, name in enumerate("hmo", start=1)}
    samples = {"h": 2, "m": 1, "o": 3}
    host.send_weights(states["h"], epoch=1, loss=0.3, num_samples=samples["h"])
    mia.send_weights(states["m"], epoch=1, loss=0.4, num_samples=samples["m"])
    if kind == "v1":
        # Both pushes travel in the original format here, whose binaries name no sender: two
        # at once cannot be told apart (the original framing's known weakness), so one at a
        # time, as the original app's users had to.
        wait_until(recorder, lambda: len(recorder.of("host", "weights_received")) == 2, "mia's")
    olga.push(states["o"], num_samples=samples["o"])

    (weights,) = wait_until(recorder, lambda: recorder.of("host", "global"), "round")[0]
    contributors = {args[0] for args in recorder.of("host", "weights_received")}
    assert contributors == {host.user_id, mia.user_id, olga.user_id}, recorder.events
    expected = {
        name: sum(samples[k] * half(states[k])[name] for k in samples) / sum(samples.values())
        for name in states["h"]
    }
    assert_state_close(weights, expected)

    # The global model reaches both kinds of member, each in its own format.
    olga.wait_for(lambda: olga.global_models, TIMEOUT)
    sender, olga_model, info = olga.global_models[0]
    assert sender == host.user_id and info["contributor_count"] == 3
    assert_state_close(olga_model, expected)
    (mia_model,) = wait_until(recorder, lambda: recorder.of("mia", "global"), "mia's model")[0]
    assert_state_close(mia_model, expected)

    # request_model: the host answers the original member in the original format.
    olga.request_model()
    olga.wait_for(lambda: len(olga.global_models) >= 2, TIMEOUT)
    assert_state_close(olga.global_models[1][1], expected)

    # An original member's crop reaches the host as two PNGs.
    image, mask = crop_arrays(5)
    olga.send_crop(png(image), png(mask), slice_index=7)
    wait_until(recorder, lambda: crops, "crop")
    got_image, got_mask, info = crops[0]
    np.testing.assert_array_equal(decoded_png(got_image), image)
    np.testing.assert_array_equal(decoded_png(got_mask), mask)
    assert info["sender_id"] == olga.user_id and info["slice_index"] == 7

    assert olga.violations == [] and olga.binaries_seen >= 2  # must-show 5
    assert not recorder.of("host", "error") and not recorder.of("mia", "error")


@pytest.mark.parametrize("last", ["ours", "original"])
def test_the_push_that_completes_a_round_is_reported_before_the_round(
    any_relay, recorder, originals, last
):
    """The test above reads the round's contributors from `weights_received` as soon as the
    global model is there. That holds only if the push that completes a round is reported
    before the round closes: it used to be reported after (round_complete and the global model
    first), and the test above then missed the last pusher whenever the host's thread paused
    between the two. Checked here by order, not by timing, for a last push of each format."""
    kind, url, _ = any_relay
    host = make_client(recorder, "host", accept_legacy_weights=True)
    order: list[tuple] = []
    host.weights_received.connect(lambda user_id, info: order.append(("push", user_id)))
    host.round_complete.connect(lambda number, ids: order.append(("round", frozenset(ids))))
    host.global_model_received.connect(lambda weights: order.append(("global",)))
    olga, mia = open_mixed_room(recorder, originals, url, host)

    def push_mia():
        mia.send_weights(layout_state(2, SMALL), epoch=1, loss=0.4, num_samples=1)

    def push_olga():
        olga.push(layout_state(3, SMALL), num_samples=1)

    first, then = (push_olga, push_mia) if last == "ours" else (push_mia, push_olga)
    first_id, last_id = (
        (olga.user_id, mia.user_id) if last == "ours" else (mia.user_id, olga.user_id)
    )
    host.send_weights(layout_state(1, SMALL), epoch=1, loss=0.3, num_samples=1)
    first()
    wait_until(recorder, lambda: len(recorder.of("host", "weights_received")) == 2, "2 pushes")
    then()
    # Everything the round emits (in either order), then the order itself.
    wait_until(recorder, lambda: len(recorder.of("host", "weights_received")) == 3, "3 pushes")
    wait_until(recorder, lambda: recorder.of("host", "global"), "round")
    everyone = frozenset({host.user_id, mia.user_id, olga.user_id})
    assert order == [
        ("push", host.user_id),
        ("push", first_id),
        ("push", last_id),
        ("round", everyone),
        ("global",),
    ], order
    assert not recorder.of("host", "error")


@pytest.mark.parametrize("layout", [SMALL, BIG], ids=["small", "chunked"])
def test_original_host_takes_our_push_and_crop_and_we_take_its_model(
    any_relay, recorder, originals, layout
):
    kind, url, _ = any_relay
    olga = originals(url, "Olga")
    code = olga.create_room()
    mia = join(recorder, "mia", code, url, accept_legacy_weights=True)
    # Ours relay: the attested host_id; v1: the original host's session_info, never list order.
    wait_until(recorder, lambda: mia.host_id == olga.user_id, "mia knows the original host")
    if kind == "v1":
        # Another of ours, so that a framed binary would have somewhere to go on v1.
        join(recorder, "max", code, url, accept_legacy_weights=True)

    state = layout_state(11, layout)
    future = mia.send_weights(state, epoch=2, loss=0.25, num_samples=4)
    assert future is not None
    olga.wait_for(lambda: olga.pushes, TIMEOUT)
    sender, pushed, info = olga.pushes[0]
    assert sender == mia.user_id and info["num_samples"] == 4 and info["epoch"] == 2
    assert_state_close(pushed, half(state))

    average = {k: v * 0.5 for k, v in half(state).items()}
    olga.broadcast_global_model(average, contributors=1)
    (model,) = wait_until(recorder, lambda: recorder.of("mia", "global"), "global model")[0]
    assert_state_close(model, average)
    assert mia.aggregation_round == 1

    mia.request_global_model()
    wait_until(recorder, lambda: len(recorder.of("mia", "global")) >= 2, "answer")
    assert_state_close(recorder.of("mia", "global")[1][0], average)

    image, mask = crop_arrays(9)
    mia.send_training_data(image, mask, slice_index=3)
    olga.wait_for(lambda: olga.crops, TIMEOUT)
    sender, got_image, got_mask, info = olga.crops[0]
    assert sender == mia.user_id and info["slice_index"] == 3
    np.testing.assert_array_equal(decoded_png(got_image), image)
    np.testing.assert_array_equal(decoded_png(got_mask), mask)

    assert olga.violations == [], olga.violations  # must-show 5: never an SSBF binary
    assert not recorder.of("mia", "error")


# --- must-show 2: no opt-in, nothing unpickled -------------------------------------------


class WritesAFile:
    """Unpickling this creates `path`: what a hostile "original" push would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('owned')",))


def test_a_hostile_pickle_as_an_original_push_proves_effective(tmp_path):
    """The payload of the next test is real: unpickled naively, it writes its file."""
    target = tmp_path / "control"
    pickle.loads(pickle.dumps(WritesAFile(target)))
    assert target.read_text() == "owned"


@pytest.mark.parametrize("accept", [False, True], ids=["opt-out", "opt-in"])
def test_original_push_without_opt_in_is_refused_once_and_nothing_unpickled(
    any_relay, recorder, originals, tmp_path, monkeypatch, accept
):
    kind, url, _ = any_relay
    loads: list = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or real_load(*a, **k))
    host = make_client(recorder, "host", accept_legacy_weights=accept)
    crops: list = []
    host.training_data_received.connect(lambda *args: crops.append(args))
    host.create_relay_room("host", url, private=False)
    (code,) = wait_until(recorder, lambda: recorder.of("host", "room_created"), "room")[0]
    olga = originals(url, "Olga")
    olga.join_room(code)
    wait_until(recorder, lambda: len(host.users) == 2, "olga joined")

    target = tmp_path / "owned"
    olga.send_raw_push(gzip.compress(pickle.dumps(WritesAFile(target))))
    if not accept:
        olga.push(layout_state(3, SMALL))  # a genuine push: refused too, but not told twice
    wait_until(recorder, lambda: recorder.of("host", "error"), "refusal")
    olga.push(layout_state(4, SMALL), num_samples=1)
    # A crop after the pushes: once it is in, every push before it was handled.
    image, mask = crop_arrays(1)
    olga.send_crop(png(image), png(mask))
    wait_until(recorder, lambda: crops, "the marker crop")
    errors = [args[0] for args in recorder.of("host", "error")]
    assert not target.exists()
    if accept:
        # Read with the restricted loader only, which refused the pickle's global.
        assert loads and all(k.get("weights_only") is True for k in loads)
        assert "Olga" in errors[0] and "restricted loader refused" in errors[0]
        wait_until(recorder, lambda: recorder.of("host", "weights_received"), "good push")
    else:
        assert loads == []  # nothing was unpickled, not even with the restricted loader
        assert len(errors) == 1, errors  # one message per sender, however many pushes
        assert "Olga" in errors[0] and "original Segmentation Suite app" in errors[0]
        assert "Accept weights from the original app" in errors[0]
        assert not recorder.of("host", "weights_received")


# --- must-show 3: a gzip bomb in bounded memory ------------------------------------------


def gzip_bomb(expanded_gib: int = 10) -> bytes:
    """A valid gzip of `expanded_gib` GiB of zeros, built from one fully flushed deflate block
    repeated (each block starts on a byte boundary with no history, so repeats are valid)."""
    piece = 16 * 1024 * 1024
    repeats = expanded_gib * 1024 // 16
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = compressor.compress(bytes(piece)) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    zeros = bytes(piece)
    for _ in range(repeats):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    final = b"\x03\x00"  # an empty final fixed-Huffman block
    size = (repeats * piece) & 0xFFFFFFFF
    return header + block * repeats + final + crc.to_bytes(4, "little") + size.to_bytes(4, "little")


def peak_rss_reset() -> int:
    """Resets the process's peak RSS (Linux clear_refs 5); returns the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return rss_field("VmRSS")


def rss_field(name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {name} in /proc/self/status")


@pytest.fixture(scope="module")
def bomb():
    data = gzip_bomb(10)
    # Checked independently of the code under test: it really expands to 10 GiB.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total = 0
    for i in range(0, len(data), 1 << 20):
        view = data[i : i + (1 << 20)]
        while view:
            total += len(inflater.decompress(view, 64 << 20))
            view = inflater.unconsumed_tail
    assert total == 10 * 1024**3 and inflater.eof
    return data


def run_bomb_host(url: str, out, commands) -> None:
    """The host, in a process of its own, so that only its memory is measured (not the
    emulator's send buffers): reports the room code, then its peak RSS growth from the moment
    the test says the bomb goes out until the host refused it."""
    import queue as queue_module

    from segmentation_suite.network import SyncClient

    errors: queue_module.Queue = queue_module.Queue()
    host = SyncClient(accept_legacy_weights=True)
    host.error.connect(errors.put)
    host.room_created.connect(lambda code: out.put(("code", code)))
    host.user_joined_room.connect(lambda name: out.put(("joined", name)))
    host.create_relay_room("host", url, private=False)
    assert commands.get(timeout=TIMEOUT) == "push"
    # The room's model: 3 MiB of float32, so an original push may expand to 12 MiB.
    layout = [{"name": "w", "shape": [768 * 1024], "dtype": "float32"}]
    host.send_weights(layout_state(1, layout), epoch=1, loss=0.1).result(TIMEOUT)
    before = peak_rss_reset()
    out.put(("ready", before))
    text = errors.get(timeout=TIMEOUT)
    out.put(("refused", text, rss_field("VmHWM") - before))
    host.disconnect()


def test_gzip_bomb_as_an_original_push_is_refused_in_bounded_memory(originals, bomb):
    v1 = V1Relay()
    context = multiprocessing.get_context("spawn")
    out, commands = context.Queue(), context.Queue()
    process = context.Process(target=run_bomb_host, args=(v1.url, out, commands))
    process.start()
    try:
        kind, code = out.get(timeout=TIMEOUT)
        assert kind == "code"
        olga = originals(v1.url, "Olga")
        olga.join_room(code)
        assert out.get(timeout=TIMEOUT) == ("joined", "Olga")
        commands.put("push")
        assert out.get(timeout=TIMEOUT)[0] == "ready"
        olga.send_raw_push(bomb)
        kind, error, growth = out.get(timeout=TIMEOUT)
        assert kind == "refused"
        assert "Olga" in error and "expands to more than" in error
        assert growth < 64 * 1024 * 1024, f"peak RSS grew by {growth / 2**20:.1f} MiB"
        grown = growth / 2**20
        print(f"gzip bomb: {len(bomb)} bytes -> 10 GiB; host's peak RSS growth {grown:.1f} MiB")
    finally:
        process.join(TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join(5)
        v1.stop()


# --- must-show 4: the idle drill on the v1 fixture ---------------------------------------


def test_idle_reordered_room_late_joiner_pushes_to_the_real_host(recorder, originals):
    v1 = V1Relay("--reorder-after-idle", "1.0")
    try:
        host = make_client(recorder, "host", aggregation_timeout=120)
        rounds: list = []
        host.round_complete.connect(lambda number, who: rounds.append((number, sorted(who))))
        host.create_relay_room("host", v1.url, private=False)
        (code,) = wait_until(recorder, lambda: recorder.of("host", "room_created"), "room")[0]
        amy = join(recorder, "amy", code, v1.url)
        wait_until(recorder, lambda: amy.host_id == host.user_id, "amy knows the host")
        # The room idles past the fixture's threshold (a state of the fixture, not a timing
        # assertion): the next membership list comes back in another order.
        time.sleep(1.5)
        lee = join(recorder, "lee", code, v1.url)
        assert lee.users[0]["user_id"] != host.user_id, "the fixture did not reorder"
        wait_until(recorder, lambda: lee.host_id == host.user_id, "lee knows the real host")
        # A member counts as original until its peer_hello arrived (a v1 relay attests
        # nothing); until then a push would go in the original format.
        wait_until(
            recorder,
            lambda: not amy.original_members and not lee.original_members,
            "amy and lee know each other speak our protocol",
        )

        amy.send_weights(layout_state(1, SMALL), epoch=1, loss=0.5, num_samples=1)
        lee.send_weights(layout_state(2, SMALL), epoch=1, loss=0.5, num_samples=1)
        wait_until(recorder, lambda: rounds, "the host's round")
        assert rounds[0] == (1, sorted([amy.user_id, lee.user_id]))
        wait_until(recorder, lambda: recorder.of("lee", "global"), "lee gets the global model")
        expected = {
            k: (half(layout_state(1, SMALL))[k] + half(layout_state(2, SMALL))[k]) / 2
            for k in layout_state(1, SMALL)
        }
        assert_state_close(recorder.of("lee", "global")[0][0], expected)
        assert not recorder.of("lee", "error") and not recorder.of("amy", "error")
    finally:
        v1.stop()
