"""The original app's formats (legacy_format.py): written as the original writes them, read
only through the bounded gunzip and PyTorch's restricted loader, crops checked as PNG.

Expected bytes come from the standard library and torch directly (gzip + torch.save), not
from the module under test."""

from __future__ import annotations

import gzip
import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from segmentation_suite.network import legacy_format
from segmentation_suite.network.legacy_format import LegacyFormatError


def original_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.half() for k, v in state.items()}, buffer)
    return gzip.compress(buffer.getvalue())


def test_encode_is_gzip_of_torch_save_of_float16():
    state = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "n": np.int64(7)}
    data = legacy_format.encode_weights(state)
    loaded = torch.load(io.BytesIO(gzip.decompress(data)), weights_only=True)
    assert loaded["w"].dtype == torch.float16 and loaded["n"].dtype == torch.int64
    np.testing.assert_array_equal(loaded["w"].numpy(), state["w"].astype(np.float16))


def test_decode_reads_the_original_bytes_as_float32():
    state = {"conv.weight": torch.randn(4, 3), "conv.bias": torch.randn(4)}
    weights = legacy_format.decode_weights(original_bytes(state), limit=1 << 20)
    assert sorted(weights) == ["conv.bias", "conv.weight"]
    assert weights["conv.weight"].dtype == torch.float32
    torch.testing.assert_close(weights["conv.weight"], state["conv.weight"].half().float())


def torch_saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


class WritesAFile:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('owned')",))


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "owned"
    with pytest.raises(LegacyFormatError, match="restricted loader refused") as refused:
        # Protocol 2, as torch.save writes: the loader gets as far as the global it refuses.
        hostile = pickle.dumps(WritesAFile(target), protocol=2)
        legacy_format.decode_weights(gzip.compress(hostile), 1 << 20)
    assert not target.exists()
    assert "exec" in str(refused.value) and "weights_only" not in str(refused.value)


@pytest.mark.parametrize(
    "data, why",
    [
        (b"SSBF\x01\x01", "no gzip header"),
        (gzip.compress(b"x" * 100)[:-12], "truncated"),
        (gzip.compress(b"x" * 100) + b"junk", "follow the gzip stream"),
        (b"\x1f\x8b\x08\x00garbage-garbage", "corrupt"),
        (gzip.compress(torch_saved([1, 2, 3])), "not a state dict"),
        (gzip.compress(b"not a pickle at all"), "restricted loader refused"),
    ],
    ids=["ours", "truncated", "trailing", "corrupt", "list", "not-pickle"],
)
def test_malformed_payloads_are_refused_with_a_reason(data, why):
    with pytest.raises(LegacyFormatError, match=why):
        legacy_format.decode_weights(data, limit=1 << 20)


def test_gunzip_stops_at_the_limit():
    bomb = gzip.compress(bytes(50 * 1024 * 1024))
    with pytest.raises(LegacyFormatError, match="expands to more than 1048576 bytes"):
        legacy_format.bounded_gunzip(bomb, 1024 * 1024)
    assert legacy_format.bounded_gunzip(gzip.compress(b"abc" * 1000), 3000) == b"abc" * 1000


def test_expansion_limit_is_four_times_the_model_and_never_over_the_message_limit():
    reference = {"w": np.zeros((256, 256), np.float32)}  # 256 KiB as float32
    assert legacy_format.expansion_limit(reference, 64 << 20) == 4 * 256 * 1024
    assert legacy_format.expansion_limit(reference, 100_000) == 100_000
    assert legacy_format.expansion_limit(None, None) == 64 * 1024 * 1024


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_crops_must_be_readable_pngs_of_bounded_size():
    legacy_format.check_png(png(np.zeros((8, 8), np.uint8)), "image")
    with pytest.raises(LegacyFormatError, match="not a PNG"):
        legacy_format.check_png(b"SSBF\x01", "image")
    with pytest.raises(LegacyFormatError, match="not a readable PNG"):
        legacy_format.check_png(png(np.zeros((8, 8), np.uint8))[:40], "mask")
    with pytest.raises(LegacyFormatError, match="more than 63"):
        legacy_format.check_png(png(np.zeros((8, 8), np.uint8)), "image", max_pixels=63)
