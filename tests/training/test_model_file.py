"""Model files: safetensors with metadata, round trips, and every malformed file refused in
words (a pickle, truncations, foreign or damaged metadata)."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from segmentation_suite.training.model_file import (
    FORMAT,
    CheckpointFolder,
    ModelFileError,
    load_model,
    save_model,
)
from segmentation_suite.training.unet import ARCHITECTURE, build_unet, parse_architecture


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_unet().state_dict()


def _saved(tmp_path, **training):
    return save_model(
        tmp_path / "m.safetensors", _weights(), architecture=ARCHITECTURE, training=training
    )


def test_round_trip_keeps_weights_architecture_and_plan(tmp_path):
    weights = _weights(3)
    path = save_model(
        tmp_path / "sub" / "m.safetensors",
        weights,
        architecture=ARCHITECTURE,
        training={"rounds": 5, "learning_rate": 0.003, "data": "synthetic"},
        round_number=4,
    )
    assert path.exists()
    # Plain safetensors: any safetensors reader sees the same tensors and metadata.
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as raw:
        assert raw.metadata()["architecture"] == ARCHITECTURE
        assert json.loads(raw.metadata()["training"])["rounds"] == 5
        assert sorted(raw.keys()) == sorted(weights)
    loaded = load_model(path)
    assert loaded.architecture == ARCHITECTURE
    assert loaded.training == {"rounds": 5, "learning_rate": 0.003, "data": "synthetic"}
    assert loaded.round == 4
    assert loaded.metadata["format"] == FORMAT
    for key, value in weights.items():
        assert torch.equal(loaded.weights[key], value), key
    model = loaded.build()
    assert not model.training
    image = torch.rand(1, 1, 37, 51)
    reference = build_unet()
    reference.load_state_dict(weights)
    reference.eval()
    with torch.no_grad():
        assert torch.equal(model(image), reference(image))


def test_a_torch_pickle_is_refused_even_when_named_safetensors(tmp_path):
    for legacy in (False, True):
        path = tmp_path / f"pickle-{legacy}.safetensors"
        torch.save(_weights(), path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(ModelFileError, match=r"PyTorch pickle \(torch.save\), not safetensors"):
            load_model(path)


@pytest.mark.parametrize("keep", [0, 5, 8, 20, -1])
def test_a_truncated_file_is_refused(tmp_path, keep):
    data = _saved(tmp_path).read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(cut)


def test_garbage_and_foreign_files_are_refused(tmp_path):
    cases = {
        "huge-header": struct.pack("<Q", 2**40) + b"{}",
        "not-json": struct.pack("<Q", 4) + b"\xff\xfe{x",
        "array-header": struct.pack("<Q", 2) + b"[]",
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(ModelFileError, match="not a safetensors file"):
            load_model(path)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="not a segmentation-suite model"):
        load_model(foreign)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ModelFileError, match="is a folder"):
        load_model(tmp_path)


def _rewrite_metadata(path, **changes):
    from safetensors.torch import load_file, save_file

    from segmentation_suite.training.model_file import load_model as reread

    metadata = dict(reread(path).metadata)
    metadata.update(changes)
    metadata = {k: v for k, v in metadata.items() if v is not None}
    save_file(load_file(str(path)), str(path), metadata=metadata)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": "99"}, "format version '99'"),
        ({"architecture": None}, "does not say its architecture"),
        ({"training": "{not json"}, "training metadata is not JSON"),
        ({"training": "[1, 2]"}, "not a JSON object"),
    ],
)
def test_wrong_metadata_is_refused(tmp_path, changes, message):
    path = _saved(tmp_path)
    _rewrite_metadata(path, **changes)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_weights_that_do_not_fit_their_architecture_are_refused_at_build(tmp_path):
    path = _saved(tmp_path)
    _rewrite_metadata(path, architecture="unet2d-v1:base=16:depth=2")
    with pytest.raises(ModelFileError, match="has shape"):
        load_model(path).build()
    _rewrite_metadata(path, architecture="resnet50")
    with pytest.raises(ModelFileError, match="unknown architecture 'resnet50'"):
        load_model(path).build()


def test_damaged_tensor_data_is_refused(tmp_path):
    data = bytearray(_saved(tmp_path).read_bytes())
    header_length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + header_length])
    first = next(k for k in header if k != "__metadata__")
    header[first]["dtype"] = "NOPE"
    encoded = json.dumps(header).encode()
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + header_length :])
    with pytest.raises(ModelFileError, match="damaged"):
        load_model(damaged)


def test_parse_architecture_reads_names_and_refuses_others():
    assert parse_architecture(ARCHITECTURE) == {"base_channels": 8, "depth": 2}
    for bad in ("unet2d-v2:base=8:depth=2", "unet2d-v1:base=0:depth=2", "", "x" * 1000):
        with pytest.raises(ValueError):
            parse_architecture(bad)


def test_checkpoint_folder_keeps_every_round_in_a_new_folder(tmp_path):
    def new(training):
        return CheckpointFolder.new(
            "train", architecture=ARCHITECTURE, training=training, root=tmp_path
        )

    first, second = new({"e": 1}), new({})
    assert first.path != second.path and first.path.parent == second.path.parent == tmp_path
    for number in (1, 2, 3):
        first.save(number, _weights(number))
    names = sorted(p.name for p in first.path.iterdir())
    assert names == ["round-001.safetensors", "round-002.safetensors", "round-003.safetensors"]
    loaded = load_model(first.path / "round-002.safetensors")
    assert loaded.round == 2 and loaded.training == {"e": 1}
    assert torch.equal(loaded.weights["head.weight"], _weights(2)["head.weight"])


def test_a_model_whose_header_length_starts_like_a_pickle_still_loads(tmp_path):
    # 0x80 is also the first byte of a pickle: the check for pickles must not catch this.
    for padding in range(256):
        path = save_model(
            tmp_path / "m.safetensors",
            _weights(),
            architecture=ARCHITECTURE,
            training={"note": "x" * padding},
        )
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length starting with 0x80")
    assert load_model(path).training["note"] == "x" * padding


# --- hostile input: whatever the bytes, a ModelFileError or a model, nothing else ------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_VALID = None


def _valid_bytes() -> bytes:
    global _VALID
    if _VALID is None:
        from safetensors.torch import save

        from segmentation_suite.training.model_file import FORMAT, FORMAT_VERSION

        _VALID = save(
            {"a": torch.arange(6, dtype=torch.float32), "b": torch.ones(2, 2)},
            metadata={
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "architecture": ARCHITECTURE,
                "training": "{}",
            },
        )
    return _VALID


def _load_bytes(data: bytes):
    from segmentation_suite.training.model_file import parse_model

    try:
        return parse_model(data)
    except ModelFileError:
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_or_truncated_files_raise_model_file_error_only(data):
    original = bytearray(_valid_bytes())
    kind = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    if kind == "truncate":
        mutated = bytes(original[: data.draw(st.integers(0, len(original) - 1))])
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            index = data.draw(st.integers(0, len(original) - 1))
            original[index] = data.draw(st.integers(0, 255))
        mutated = bytes(original)
    else:
        start = data.draw(st.integers(8, len(original)))
        mutated = bytes(original[:start]) + data.draw(st.binary(max_size=64))
    _load_bytes(mutated)  # anything but ModelFileError propagates and fails the test


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=8),
            st.lists(st.integers(-5, 10**12), max_size=3),
            st.dictionaries(
                st.sampled_from(["dtype", "shape", "data_offsets"]),
                st.one_of(st.text(max_size=4), st.lists(st.integers(-5, 99), max_size=3)),
            ),
        ),
        max_size=4,
    ),
    st.binary(max_size=64),
)
def test_hostile_headers_raise_model_file_error_only(header, payload):
    encoded = json.dumps(header).encode()
    _load_bytes(struct.pack("<Q", len(encoded)) + encoded + payload)
