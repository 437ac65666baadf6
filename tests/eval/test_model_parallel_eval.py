"""Evaluation on a (data, model) mesh: eval.model_parallel=4 gives the metrics of model_parallel=1.

model_parallel=1 is the path tests/eval/test_sweep_eval.py checks against direct splicing with
numpy cross-entropy; here the LM's params are sharded 4 ways over the 8 forced CPU devices (heads
8, KV heads 4, MLP 128 and vocab 512 all divide 4) and batches split over the other 2. The exact
identity splice must still give delta loss and KL of exactly 0.
"""

import ml_collections
import numpy as np
import pytest
from oracle_saes import identity_sae
from tiny_model import random_params

from gemmascope import eval as gs_eval
from gemmascope import model
from gemmascope.eval.sweep_eval import SaeEntry, evaluate_saes

CFG = model.presets.tiny(
    num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4, head_dim=8
)
D = CFG.hidden_size


def _entry(name, params, site, encoder=None):
    config = {
        "site": site,
        "kind": site.split("/")[0],
        "layer": int(site.split("/")[1]),
        "d_in": params["W_enc"].shape[0],
        "width": params["W_enc"].shape[1],
        "architecture": "test",
    }
    return SaeEntry(
        f"/fake/{name}",
        config,
        {k: np.asarray(v, np.float32) for k, v in params.items()},
        encoder=encoder or {"type": "jumprelu"},
    )


def _random(seed, d, width=2 * D):
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d, width)) / np.sqrt(d),
        "W_dec": rng.normal(size=(width, d)) / np.sqrt(width),
        "b_enc": rng.normal(size=width) * 0.1,
        "b_dec": rng.normal(size=d) * 0.1,
        "threshold": np.full(width, 0.3),
    }


def _eval_cfg(model_parallel):
    cfg = gs_eval.default_config()
    cfg.batch_size = 2
    cfg.splice_batch = 2
    cfg.model_parallel = model_parallel
    return cfg


@pytest.mark.slow
def test_model_parallel_metrics_equal_replicated():
    params = random_params(CFG, seed=0, std=0.1)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, CFG.vocab_size, size=(5, 14)).astype(np.int32)
    tokens[:, 0] = CFG.bos_token_id
    assert CFG.is_sliding(0) and tokens.shape[1] > CFG.sliding_window  # the window binds
    saes = [
        _entry("identity", identity_sae(D), "resid_post/1"),
        _entry("random", _random(1, D), "resid_post/1"),
        _entry("mlp0", _random(2, D), "mlp_out/0"),  # layer 0: spliced from the embedding
        _entry("identity_mlp0", identity_sae(D), "mlp_out/0"),
    ]
    replicated = evaluate_saes(CFG, params, tokens, saes, _eval_cfg(1))
    sharded = evaluate_saes(CFG, params, tokens, saes, _eval_cfg(4))
    for entry, (want, want_details), (got, got_details) in zip(
        saes, replicated, sharded, strict=True
    ):
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            # loss_recovered divides two loss differences ~500x smaller than the losses
            # (zero-ablating mlp_out/0 moves the loss by 0.01 nats): its rounding is amplified.
            rel = 1e-4 if key == "loss_recovered" else 1e-5
            assert got[key] == pytest.approx(value, rel=rel, abs=1e-6, nan_ok=True), (
                entry.folder,
                key,
            )
        np.testing.assert_allclose(
            np.asarray(got_details["recon_loss_by_position"], float),
            np.asarray(want_details["recon_loss_by_position"], float),
            rtol=1e-5,
        )
        assert got_details["firing_histogram"] == want_details["firing_histogram"]
    by_name = {
        entry.folder.split("/")[-1]: got for entry, (got, _) in zip(saes, sharded, strict=True)
    }
    for exact in ("identity", "identity_mlp0"):
        assert by_name[exact]["delta_loss"] == 0.0 and by_name[exact]["kl_div"] == 0.0
        assert by_name[exact]["fvu"] == 0.0
    assert abs(by_name["random"]["delta_loss"]) > 1e-3  # the splice really changes the loss


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (3, r"eval.model_parallel=3 does not divide the 8 local devices.*\[1, 2, 4, 8\]"),
        (0, "eval.model_parallel must be a positive integer, got 0"),
    ],
)
def test_bad_model_parallel_is_refused(value, message):
    entry = _entry("identity", identity_sae(D), "resid_post/0")
    tokens = np.full((1, 4), 5, np.int32)
    with pytest.raises(ValueError, match=message):
        evaluate_saes(CFG, {}, tokens, [entry], _eval_cfg(value))


def test_validate_names_model_parallel():
    cfg = _eval_cfg(-1)
    with pytest.raises(ValueError, match="eval.model_parallel must be a positive integer"):
        gs_eval.config.validate(cfg)


def test_evaluate_refuses_model_parallel_before_loading_anything(tmp_path):
    config = ml_collections.ConfigDict(
        {"model": {"path": str(tmp_path / "absent")}, "eval": _eval_cfg(5).to_dict()}
    )
    with pytest.raises(ValueError, match=r"eval.model_parallel=5 does not divide"):
        gs_eval.evaluate(config, str(tmp_path))
