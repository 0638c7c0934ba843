"""bench/bench_end_to_end.py, run with a tiny model: it measures every method end to end
through the real relay, and what each receiver ends up holding is what was sent.

No timing is asserted: this checks that the benchmark moves real weights and reports a time
for each of them, not how fast anything is. The comparison of sent and received dicts is done
here, from the .npz files the script writes, not by the script's own check.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the MOSS-style method and the codec's torch output need it")
pytest.importorskip("websockets", reason="the MOSS-style client is built on websockets")

from segmentation_suite.relay_process import find_relay_binary  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_end_to_end.py"
METHODS = ("ours-f16", "ours-f32", "codec-ws", "moss")
# float32 in, one of the layout's own dtypes out; shapes include a 0-d integer scalar, an
# empty tensor and one of several chunks (16 KiB chunks over ~1.2 MB of float32).
TINY_LAYOUT = [
    {"name": "conv.weight", "shape": [8, 3, 3, 3], "dtype": "float32"},
    {"name": "conv.bias", "shape": [8], "dtype": "float32"},
    {"name": "bn.num_batches_tracked", "shape": [], "dtype": "int64"},
    {"name": "empty", "shape": [0, 4], "dtype": "float32"},
    {"name": "fc.weight", "shape": [300, 1000], "dtype": "float32"},
]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    try:
        find_relay_binary()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    tmp = tmp_path_factory.mktemp("bench_end_to_end")
    layout = tmp / "tiny_layout.json"
    layout.write_text(json.dumps({"layout": TINY_LAYOUT}))
    out = tmp / "out.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--layout",
        str(layout),
        "--runs",
        "2",
        "--chunk-size",
        str(16 * 1024),
        "--timeout",
        "30",
        "--json",
        str(out),
        "--save-received",
        str(tmp),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp, json.loads(out.read_text()), result.stdout


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def test_every_method_has_positive_timings_and_the_table_shows_them(bench_run):
    _, summary, stdout = bench_run
    assert list(summary) == list(METHODS)
    for method, row in summary.items():
        assert len(row["runs"]["total_ms"]) == 2, method
        # transfer_ms > 0 spans two processes: the receiver's last byte comes after the
        # sender's encoding on the shared monotonic clock.
        for figure in ("total_ms", "serialize_ms", "transfer_ms", "decode_ms"):
            assert all(value > 0 for value in row["runs"][figure]), (method, figure)
        assert row["payload_bytes"] > 0
        assert f"{row['total_ms']:.1f}" in stdout
    assert "MOSS-style / ours-f16:" in stdout


def test_wss_and_ws_and_the_tls_floor_are_side_by_side(bench_run):
    _, _, stdout = bench_run
    rows = re.findall(r"^  (\w+ \w+) +(\d+) MB/s +(\d+\.\d\d) CPU-s/GB$", stdout, re.MULTILINE)
    expected = {"ws raw", "wss raw", "wss lws", "ws room", "wss room", "floor tcp", "floor tls"}
    assert {label for label, _, _ in rows} == expected, stdout
    assert all(int(rate) > 0 and float(cpu) > 0 for _, rate, cpu in rows), rows
    for kind in ("echo", "room"):
        assert re.search(
            rf"^wss/ws, {kind} +\d+\.\d\dx \(CPU-s/GB plain/TLS \d+\.\d\dx, "
            r"TLS adds -?\d+\.\d\d\)  "
            r"(met|MISSED) wss >= 0\.8x ws$",
            stdout,
            re.MULTILINE,
        ), stdout
    assert re.search(r"^tls/tcp, floor +\d+\.\d\dx", stdout, re.MULTILINE), stdout


def test_ours_is_chunked_by_the_requested_size(bench_run):
    _, summary, _ = bench_run
    chunk = 16 * 1024
    for method in ("ours-f16", "ours-f32"):
        payload = summary[method]["payload_bytes"]
        # Each message is at most `chunk` bytes, header included, so it takes more than
        # payload / chunk of them.
        assert summary[method]["messages"] > payload // chunk, method
    # float16 on the wire is about half of float32 on the wire.
    ratio = summary["ours-f16"]["payload_bytes"] / summary["ours-f32"]["payload_bytes"]
    assert 0.45 < ratio < 0.55


def test_received_dicts_equal_the_sent_one(bench_run):
    tmp, _, _ = bench_run
    sent = load(tmp / "sent.npz")
    assert sorted(sent) == sorted(entry["name"] for entry in TINY_LAYOUT)
    for entry in TINY_LAYOUT:
        assert sent[entry["name"]].shape == tuple(entry["shape"])
        assert sent[entry["name"]].dtype == entry["dtype"]
    for method in METHODS:
        received = load(tmp / f"received_{method}.npz")
        assert sorted(received) == sorted(sent), method
        for name, original in sent.items():
            value = received[name]
            assert value.dtype == original.dtype and value.shape == original.shape, name
            if method == "ours-f32" or original.dtype != np.float32:
                np.testing.assert_array_equal(value, original, err_msg=f"{method} {name}")
            else:
                # float16 on the wire: each value is the float16 nearest to the sent one.
                expected = original.astype(np.float16).astype(np.float32)
                np.testing.assert_array_equal(value, expected, err_msg=f"{method} {name}")
                np.testing.assert_allclose(value, original, rtol=2**-11, atol=2**-25)


def test_the_script_refuses_unknown_methods():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--methods", "ours-f16,telepathy"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--methods" in result.stderr
