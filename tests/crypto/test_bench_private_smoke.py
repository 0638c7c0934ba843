"""bench/bench_end_to_end.py's `private` method with a tiny model through the real relay: the
receiver, which opens the sealed transfer chunk by chunk (16 KiB chunks, so every segment is
gathered across many of them), ends up holding what was sent, rounded to float16 as in an open
room. No timing is asserted; the comparison is done here from the .npz files the script writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the benchmark's receiver decodes into torch tensors")
pytest.importorskip("websockets", reason="the benchmark opens a websockets connection too")

from segmentation_suite.relay_process import find_relay_binary  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = [
    {"name": "conv.weight", "shape": [8, 3, 3, 3], "dtype": "float32"},
    {"name": "bn.num_batches_tracked", "shape": [], "dtype": "int64"},
    {"name": "fc.weight", "shape": [300, 1000], "dtype": "float32"},
]


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def test_private_method_delivers_the_weights(tmp_path) -> None:
    try:
        find_relay_binary()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"layout": LAYOUT}))
    out = tmp_path / "out.json"
    command = [
        sys.executable, str(ROOT / "bench/bench_end_to_end.py"), "--layout", str(layout),
        "--methods", "ours-f16,private", "--runs", "1", "--chunk-size", str(16 * 1024),
        "--timeout", "30", "--json", str(out), "--save-received", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "private / ours-f16:" in result.stdout
    summary = json.loads(out.read_text())
    assert summary["private"]["total_ms"] > 0
    # sealing adds its header and one tag per 1 MiB segment to the float16 message
    assert summary["private"]["payload_bytes"] > summary["ours-f16"]["payload_bytes"]
    sent, received = load(tmp_path / "sent.npz"), load(tmp_path / "received_private.npz")
    assert list(received) == list(sent)
    for name, array in sent.items():
        expected = array.astype(np.float16).astype(np.float32) if array.dtype.kind == "f" else array
        np.testing.assert_array_equal(received[name], expected)
