"""`gguf-package:<name>` model paths: converted once into the cache folder, then reused.

The package and the converter are stand-ins here (the real conversion of the real package runs in
test_model_gemma3_270m); these tests check the resolver's own rules: where the folder goes, that
the second use converts nothing, that the assembled GGUF is removed, that losing a race to another
process is not an error, and the messages for an unknown name or a missing package.
"""

import json
import sys
import types

import pytest

from gemmascope import model
from gemmascope.model import convert, packaged

SHA = "ab" * 32


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A stand-in package and converter; returns the record of their calls."""
    calls = {"assemble": [], "convert": []}

    def assemble(path, overwrite=False):
        calls["assemble"].append(path)
        path.write_bytes(b"GGUF")
        return path

    def convert_gguf(gguf, out):
        calls["convert"].append((gguf, out))
        assert gguf.read_bytes() == b"GGUF"  # the GGUF exists while converting
        out.mkdir()
        (out / convert.MARKER_FILE).write_text(json.dumps({"gguf_sha256": SHA}))
        return out

    package = types.ModuleType("fake_gguf_package")
    package.EXPECTED_SHA256, package.MODEL_NAME, package.assemble = SHA, "m.gguf", assemble
    monkeypatch.setitem(sys.modules, "fake_gguf_package", package)
    monkeypatch.setitem(
        packaged.PACKAGES, "fake", packaged.PackagedGGUF("fake_gguf_package", "fake-pip")
    )
    monkeypatch.setattr(convert, "convert_gguf", convert_gguf)
    monkeypatch.setenv(packaged.ENV_CACHE, str(tmp_path / "cache"))
    return calls


def test_converted_on_first_use_then_reused(fake, tmp_path):
    folder = tmp_path / "cache" / "models" / "fake"
    assert model.resolve_path("gguf-package:fake") == str(folder)
    assert len(fake["assemble"]) == len(fake["convert"]) == 1
    assert fake["convert"][0][1] == folder
    assert not fake["assemble"][0].exists()  # the 253 MB GGUF is not kept
    assert packaged.resolve("gguf-package:fake") == str(folder)
    assert len(fake["assemble"]) == len(fake["convert"]) == 1  # nothing done the second time


def test_a_folder_of_another_gguf_is_converted_again(fake, tmp_path):
    # convert_gguf itself refuses to overwrite it: the resolver must not treat it as done.
    folder = tmp_path / "cache" / "models" / "fake"
    folder.mkdir(parents=True)
    (folder / convert.MARKER_FILE).write_text(json.dumps({"gguf_sha256": "0" * 64}))
    with pytest.raises(FileExistsError):
        packaged.resolve("gguf-package:fake")
    assert len(fake["convert"]) == 1 and not fake["assemble"][0].exists()


def test_losing_the_race_to_another_process_returns_its_folder(fake, monkeypatch, tmp_path):
    folder = tmp_path / "cache" / "models" / "fake"

    def other_process_wins(gguf, out):
        out.mkdir()
        (out / convert.MARKER_FILE).write_text(json.dumps({"gguf_sha256": SHA}))
        raise OSError(39, "Directory not empty")  # our rename onto its folder

    monkeypatch.setattr(convert, "convert_gguf", other_process_wins)
    assert packaged.resolve("gguf-package:fake") == str(folder)


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(packaged.ENV_CACHE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert packaged.cache_dir() == tmp_path / "gemmascope"


def test_unknown_name_and_missing_package_are_named(monkeypatch):
    with pytest.raises(ValueError, match="Unknown packaged model 'gguf-package:nope'; valid: "
                       "gguf-package:gemma3_270m"):  # fmt: skip
        model.resolve_path("gguf-package:nope")
    monkeypatch.setitem(
        packaged.PACKAGES, "gone", packaged.PackagedGGUF("no_such_module_xyz", "gone-pip")
    )
    with pytest.raises(ImportError, match="needs the package gone-pip"):
        model.resolve_path("gguf-package:gone")


def test_other_paths_pass_through():
    assert model.resolve_path("/some/folder") == "/some/folder"
    assert model.resolve_path("embedded").endswith("tiny_gemma")
