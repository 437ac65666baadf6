"""Converts a GGUF file (llama.cpp's format) into an HF safetensors folder, once.

Synopsis:
    python -m gemmascope.model.convert --gguf=gemma-3-270m-q4_k_m.gguf --out=models/gemma3_270m
    folder = convert.convert_gguf("gemma-3-270m-q4_k_m.gguf", "models/gemma3_270m")
    cfg, params, tok = model.load_from_config({"path": str(folder)})

transformers reads the GGUF (it needs the ``gguf`` and ``accelerate`` packages) and dequantizes
every tensor to fp32, undoing llama.cpp's layout changes on the way (Gemma's norm weights are
stored there as 1 + w). The model is then saved with ``save_pretrained`` next to the GGUF's own
tokenizer, after removing the ``quantization_config`` transformers attaches to a GGUF-loaded
model: the weights are no longer quantized, and with that key the folder would send transformers
back to the GGUF quantizer (and ``load_hf`` refuses it). The saved weights are fp32 by default
(the dequantized values exactly; ``--dtype=bfloat16`` halves the folder and rounds them).

The result is a cache: the folder is written under a temporary name, checked with ``load_hf``'s
checks (config, every tensor name and shape, the tokenizer's size against the embedding), and
renamed into place; ``gemmascope_conversion.json`` in it records the GGUF's sha256. Converting
the same GGUF into an existing folder returns it at once; a different GGUF, or a folder this
converter did not write, is an error rather than an overwrite.

Only the model families ``gemmascope.model`` runs are accepted (Gemma 2 and Gemma 3 text
decoders); anything else is refused after reading the GGUF's metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gemmascope.model import checkpoint
from gemmascope.model.hf_config import CONFIG_CLASSES

MARKER_FILE = "gemmascope_conversion.json"
_DTYPES = ("float32", "bfloat16")
_REQUIRED_PACKAGES = ("gguf", "accelerate", "torch")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within the block, ``gguf.GGUFReader`` parses each file once and hands out that reader.

    transformers opens the GGUF three times (config, weights, tokenizer) and each parse of a
    262k-token Gemma vocabulary takes ~13 s on one CPU core. The reader is read-only (a numpy
    memmap), so sharing it is safe; if a transformers version stops looking the class up on the
    ``gguf`` module at call time, this just has no effect.
    """
    import gguf

    original = gguf.GGUFReader
    parsed: dict[tuple[str, str], Any] = {}

    def reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in parsed:
            parsed[key] = original(path, mode)
        return parsed[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _check_packages() -> None:
    missing = [name for name in _REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"Converting a GGUF needs the packages {list(_REQUIRED_PACKAGES)}; missing "
            f"{missing} (pip install {' '.join(missing)}, or pip install -e '.[test]')."
        )


def _existing_conversion(out: Path, sha256: str) -> bool:
    """True if ``out`` already holds this GGUF's conversion; raises if it holds anything else."""
    if not out.exists():
        return False
    marker = out / MARKER_FILE
    if not marker.is_file():
        raise FileExistsError(
            f"{str(out)!r} exists but was not written by this converter (no {MARKER_FILE}); "
            "choose another --out or remove it."
        )
    recorded = json.loads(marker.read_text()).get("gguf_sha256")
    if recorded != sha256:
        raise FileExistsError(
            f"{str(out)!r} holds the conversion of another GGUF (sha256 {recorded}, this one "
            f"{sha256}); choose another --out or remove it."
        )
    return True


def convert_gguf(gguf_path: str | os.PathLike, out: str | os.PathLike, dtype: str = "float32"):
    """Converts ``gguf_path`` into the HF folder ``out`` (or returns ``out`` if already done).

    Args:
        gguf_path: A ``.gguf`` file of a Gemma 2 or Gemma 3 text model.
        out: The folder to write (created with its parents); it must not exist unless it is
            this GGUF's earlier conversion.
        dtype: Saved weight dtype, ``"float32"`` (exact dequantized values) or ``"bfloat16"``.

    Returns:
        ``Path(out)``: config.json, model.safetensors, the tokenizer files and
        gemmascope_conversion.json.

    Raises:
        FileNotFoundError: No such GGUF file.
        FileExistsError: ``out`` exists and is not this GGUF's conversion.
        ImportError: gguf, accelerate or torch is not installed.
        ValueError: The GGUF holds a model family gemmascope does not run, an unknown dtype, or
            the converted folder fails ``load_hf``'s checks.
    """
    source, out = Path(gguf_path), Path(out)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; valid: {list(_DTYPES)}.")
    if not source.is_file():
        raise FileNotFoundError(f"GGUF file {str(source)!r} does not exist.")
    sha256 = file_sha256(source)
    if _existing_conversion(out, sha256):
        logging.info("%s is already the conversion of %s; not converting again", out, source)
        return out
    _check_packages()
    import torch  # Heavy imports, only needed here.
    import transformers

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.converting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _gguf_parsed_once():
            where = dict(pretrained_model_name_or_path=str(source.parent), gguf_file=source.name)
            hf_config = transformers.AutoConfig.from_pretrained(**where)
            if hf_config.model_type not in CONFIG_CLASSES:
                raise ValueError(
                    f"{str(source)!r} holds a {hf_config.model_type!r} model; gemmascope runs "
                    f"{sorted(CONFIG_CLASSES)}."
                )
            logging.info("dequantizing %s (%s) with transformers", source, hf_config.model_type)
            lm = transformers.AutoModelForCausalLM.from_pretrained(
                **where, config=hf_config, dtype=getattr(torch, dtype)
            )
            tokenizer = transformers.AutoTokenizer.from_pretrained(**where)
        # The weights are dequantized now; without this the saved config.json would ask
        # transformers to quantize them again (and load_hf would refuse it).
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        lm.hf_quantizer = None
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        cfg = checkpoint.check_hf_folder(tmp)
        checkpoint.check_tokenizer(cfg, tokenizer, source)
        marker = {"gguf": str(source.resolve()), "gguf_sha256": sha256, "dtype": dtype}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logging.info(
        "wrote %s: %s, %d layers, d_model %d, vocab %d, tokenizer of %d tokens",
        out,
        cfg.family,
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size,
        len(tokenizer),
    )
    return out


def main(argv: list[str]) -> None:
    """The command line: ``convert_gguf(--gguf, --out, --dtype)``."""
    del argv
    from absl import flags

    convert_gguf(flags.FLAGS.gguf, flags.FLAGS.out, flags.FLAGS.dtype)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("gguf", None, "The .gguf file to convert.", required=True)
    flags.DEFINE_string("out", None, "The HF folder to write (the cache).", required=True)
    flags.DEFINE_enum("dtype", "float32", list(_DTYPES), "Saved weight dtype.")
    app.run(main)
