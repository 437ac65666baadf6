"""The GGUF converter's bad input and cache rules (the real conversion: test_model_gemma3_270m)."""

import json

import pytest

from gemmascope.model import convert


@pytest.fixture
def gguf_file(tmp_path):
    """A stand-in file: these tests fail before anything parses it."""
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF not really")
    return path


def test_a_missing_gguf_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file .*nowhere.gguf' does not exist"):
        convert.convert_gguf(tmp_path / "nowhere.gguf", tmp_path / "out")


def test_an_unknown_dtype_lists_the_valid_ones(gguf_file, tmp_path):
    with pytest.raises(ValueError, match=r"dtype 'float16' is not supported; valid: \['float32'"):
        convert.convert_gguf(gguf_file, tmp_path / "out", dtype="float16")


def test_an_existing_folder_that_is_not_a_conversion_is_not_overwritten(gguf_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="was not written by this converter"):
        convert.convert_gguf(gguf_file, out)
    assert (out / "keep.txt").read_text() == "mine"


def test_the_conversion_of_another_gguf_is_not_overwritten(gguf_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / convert.MARKER_FILE).write_text(json.dumps({"gguf_sha256": "0" * 64}))
    with pytest.raises(FileExistsError, match="holds the conversion of another GGUF"):
        convert.convert_gguf(gguf_file, out)


def test_an_earlier_conversion_of_the_same_gguf_is_returned_as_is(gguf_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    sha = convert.file_sha256(gguf_file)
    (out / convert.MARKER_FILE).write_text(json.dumps({"gguf_sha256": sha}))
    assert convert.convert_gguf(gguf_file, out) == out
    assert sorted(p.name for p in out.iterdir()) == [convert.MARKER_FILE]


def test_file_sha256_is_the_standard_digest(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert convert.file_sha256(path) == expected


def test_the_command_line_returns_a_cached_conversion_and_names_a_missing_file(gguf_file, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    sha = convert.file_sha256(gguf_file)
    (out / convert.MARKER_FILE).write_text(json.dumps({"gguf_sha256": sha}))
    command = [sys.executable, "-m", "gemmascope.model.convert", f"--out={out}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [*command, f"--gguf={gguf_file}", "--alsologtostderr"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "not converting again" in done.stderr
    missing = subprocess.run(
        [*command, f"--gguf={tmp_path / 'nowhere.gguf'}"], capture_output=True, text=True, env=env
    )
    assert missing.returncode != 0 and "nowhere.gguf' does not exist" in missing.stderr
