"""The inspect stage end to end on a tiny study, against a fresh float64 encoding of every token.

One run of ``inspect.inspect`` (the ``study`` fixture of conftest.py: 4 SAEs at resid_post,
attn_z and mlp_out); its JSON records are checked against the oracle of
``inspect_setup.fresh_activations`` (the model's forward pass and the released-form rules in
numpy), its logit effects and neighbours against numpy; then the sampled and latent-sharded pass
on a (2, 4) mesh against the plain one.
"""

import json
import os

import inspect_setup
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from gemmascope import export, model
from gemmascope.eval import SaeEntry
from gemmascope.inspect import latents, scan, site
from gemmascope.model import params as lm_params


def _record(workdir, folder):
    sae_id = os.path.relpath(folder, os.path.join(workdir, "saes"))
    with open(os.path.join(workdir, "inspect", "data", site.slug(sae_id) + ".json")) as f:
        return json.load(f)


def test_records_equal_a_fresh_encoding(study):
    model_cfg, config, workdir, index, tokens, positions, folders = study
    assert os.path.exists(index) and len(folders) == 4
    n, t_len = tokens.shape
    for folder in folders:
        fresh, _, _ = inspect_setup.fresh_activations(model_cfg, config, folder, tokens, positions)
        record = _record(workdir, folder)
        assert record["eval_tokens"] == positions.sum() and not record["sampled"]
        after = record["context"]["after"]
        fired_somewhere = 0
        for latent in record["latents"]:
            f = fresh[..., latent["latent"]]
            tol = 1e-4 * max(float(f.max()), 1e-6) + 1e-6  # 5 significant digits of the max
            assert latent["count"] == (f > 0).sum()
            assert latent["density"] == pytest.approx((f > 0).sum() / positions.sum(), rel=1e-5)
            assert sum(latent["histogram"]["counts"]) == latent["count"]
            expected_top = np.sort(f.reshape(-1))[::-1][: config.inspect.top_k]
            expected_top = expected_top[expected_top > 0]
            got_top = [c["act"] for c in latent["top"]]
            np.testing.assert_allclose(got_top, expected_top, atol=tol, rtol=1e-5)
            contexts = latent["top"] + [c for b in latent["bands"] for c in b["contexts"]]
            for context in contexts:
                seq, pos, start = context["seq"], context["pos"], context["start"]
                assert start == max(0, pos - record["context"]["before"])
                np.testing.assert_allclose(context["act"], f[seq, pos], atol=tol, rtol=1e-5)
                shown = f[seq, start : min(t_len, pos + after + 1)]
                assert len(context["acts"]) == len(shown)
                np.testing.assert_allclose(context["acts"], shown, atol=tol, rtol=1e-5)
            for band in latent["bands"]:
                for context in band["contexts"]:
                    assert band["min"] - tol <= context["act"] <= band["max"] + tol
            if latent["count"]:
                fired_somewhere += 1
                assert latent["max"] == pytest.approx(float(f.max()), rel=1e-4)
                assert latent["bands"] and latent["top"]
                assert set(latent["top_tokens"]) <= {
                    int(tokens[c["seq"], c["pos"]]) for c in latent["top"]
                }
        assert fired_somewhere >= 5, folder  # the oracle compares real activations


def _residual_directions(model_params, sae_config, w_dec):
    kind, layer = sae_config["kind"], sae_config["layer"]
    if kind == "attn_z":
        block = model_params["layers"][layer]
        o = np.asarray(block["o"], np.float64)
        out = np.einsum("snh,nhd->sd", w_dec.reshape(len(w_dec), *o.shape[:2]), o)
        return out * (1.0 + np.asarray(block["post_attn_norm"], np.float64))
    return w_dec


def test_logit_effects_and_neighbours_equal_numpy(study):
    model_cfg, config, workdir, _, _, _, folders = study
    model_params = model.load_hf(config.model["path"])[1]
    unembed = np.asarray(model_params["embed"], np.float64)
    final_scale = 1.0 + np.asarray(model_params["final_norm"], np.float64)
    n_tokens, n_near = config.inspect.n_logit_tokens, config.inspect.n_neighbours
    for folder in folders:
        record = _record(workdir, folder)
        w_dec = export.load_npz(os.path.join(folder, "params.npz"))["W_dec"].astype(np.float64)
        logits = (
            _residual_directions(model_params, record["config"], w_dec) * final_scale
        ) @ unembed.T
        unit = w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True)
        cosine = unit @ unit.T
        np.fill_diagonal(cosine, -np.inf)
        for latent in record["latents"]:
            i = latent["latent"]
            assert [t for t, _ in latent["logits_up"]] == list(np.argsort(-logits[i])[:n_tokens])
            assert [t for t, _ in latent["logits_down"]] == list(np.argsort(logits[i])[:n_tokens])
            np.testing.assert_allclose(
                [v for _, v in latent["logits_up"]], np.sort(logits[i])[::-1][:n_tokens], atol=1e-4
            )
            assert [j for j, _ in latent["neighbours"]] == list(np.argsort(-cosine[i])[:n_near])
            np.testing.assert_allclose(
                [c for _, c in latent["neighbours"]], np.sort(cosine[i])[::-1][:n_near], atol=1e-4
            )


def test_token_table_holds_the_eval_sequences(study):
    _, _, workdir, _, tokens, positions, _ = study
    with open(os.path.join(workdir, "inspect", "data", "tokens.json")) as f:
        table = json.load(f)
    assert np.array_equal(table["sequences"], tokens)
    assert table["unscored"] == [np.flatnonzero(~row).tolist() for row in positions]
    assert table["vocab"]["4"] == inspect_setup.WORDS[0]
    with open(os.path.join(workdir, "inspect", "data", "tokens.js")) as f:
        script = f.read()
    assert script.startswith("window.GS_TOKENS = ") and json.loads(script[19:-2]) == table


def test_sampled_and_sharded_statistics_equal_the_plain_ones(study):
    """A (2, 4) mesh of forced CPU devices, latents sampled and sharded 8 ways, vs one device."""
    model_cfg, config, workdir, _, tokens, positions, folders = study
    saes = [SaeEntry.load(folder) for folder in folders]
    model_params = model.load_hf(config.model["path"])[1]
    plain_cfg = config.inspect.copy_and_resolve_references()
    plain_cfg.shard_latents_from = 0
    plain = scan.inspect_saes(model_cfg, model_params, tokens, saes, plain_cfg, positions)
    cfg = config.inspect.copy_and_resolve_references()
    cfg.model_parallel, cfg.shard_latents_from, cfg.max_latents = 4, 8, 16
    mesh = lm_params.lm_mesh(4)
    assert mesh.devices.shape == (2, 4)
    prepared = latents.prepare(saes[0], cfg, mesh)
    assert prepared.sampled and prepared.sharding.spec == PartitionSpec(latents.LATENT_AXES)
    sharded = scan.inspect_saes(model_cfg, model_params, tokens, saes, cfg, positions)
    for full, part in zip(plain, sharded, strict=True):
        ids = part.latent_ids
        assert len(ids) == 16 and np.array_equal(
            ids, latents.sample_latents(full.entry.config["width"], 16, 0)
        )
        for key in ("count", "hist", "top_pos", "sample_pos"):
            np.testing.assert_array_equal(part.stats[key], full.stats[key][ids], err_msg=key)
        for key in ("total", "top_value", "top_window", "sample_value", "sample_window"):
            np.testing.assert_allclose(part.stats[key], full.stats[key][ids], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(part.neighbours[0], full.neighbours[0][ids])
        if full.logits is not None:
            np.testing.assert_array_equal(part.logits[0][0], full.logits[0][0][ids])
