"""SAELens, the peer we compare against, in a virtualenv of its own (never a gemmascope dependency).

    python benchmarks/saelens_env.py  # creates .venv-saelens if missing, prints its python

`python_path()` returns the virtualenv's interpreter, creating it first when needed with the
pinned SAELens version and PyTorch's CPU build (torch==2.13.0, so pip does not fetch a CUDA build).
Benchmarks run the peer's side as a subprocess of that interpreter and exchange plain files
(.npy/.npz/.json), so no PyTorch or SAELens object crosses into gemmascope.
"""

import os
import subprocess
import sys

# The SAELens release every comparison in docs/benchmarks.md was taken with.
SAELENS_VERSION = "6.54.12"
TORCH_VERSION = "2.13.0"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = os.path.join(REPO, ".venv-saelens")


def python_path(venv_dir: str = DEFAULT_DIR) -> str:
    """The virtualenv's python, after creating the virtualenv with SAELens if it is missing.

    Raises:
        subprocess.CalledProcessError: venv creation or pip failed (its output is shown).
    """
    python = os.path.join(venv_dir, "bin", "python")
    if not _has_saelens(python):
        print(f"creating {venv_dir} with sae-lens=={SAELENS_VERSION} (a few minutes, once)")
        if not os.path.exists(python):
            subprocess.run([sys.executable, "-m", "venv", venv_dir], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run(
            [
                python, "-m", "pip", "install", "-q",
                f"sae-lens=={SAELENS_VERSION}", f"torch=={TORCH_VERSION}",
            ],
            check=True,
        )  # fmt: skip
    return python


def _has_saelens(python: str) -> bool:
    if not os.path.exists(python):
        return False
    probe = f"import sae_lens, sys; sys.exit(sae_lens.__version__ != {SAELENS_VERSION!r})"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


if __name__ == "__main__":
    print(python_path())
