"""End to end: evaluate() on a tiny workdir.

A saved tiny model, a text corpus, exported and imported SAEs: writes the table, details and plots;
a workdir without SAEs is a clear error.
"""

import json
import os
import sys

import ml_collections
import numpy as np
import pandas as pd
import pytest
import transformers
from tiny_model import random_params
from tokenizers import Tokenizer, models, pre_tokenizers

from gemmascope import data, export, model
from gemmascope import eval as gs_eval
from gemmascope.eval import equal_l0, table

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "export"))
from fake_training_run import fake_run  # noqa: E402  (a trainer-shaped run, shared with export)

WORDS = "the king and queen of a far land sent word to all their people at dawn".split()


def _study(tmp_path):
    """A saved tiny model with a word tokenizer, a local corpus and the study config."""
    cfg = model.presets.tiny(
        num_hidden_layers=2,
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        query_pre_attn_scalar=8,
        vocab_size=64,
    )
    model_dir = tmp_path / "tiny_model"
    model.save_hf(cfg, random_params(cfg, seed=0, std=0.2), model_dir)
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    ).save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choice(WORDS, 30)) for _ in range(40)))
    config = ml_collections.ConfigDict()
    config.model = {"path": str(model_dir), "dtype": "float32"}
    config.data = data.default_config()
    config.data.corpus = str(corpus)
    config.data.seq_len = 12
    config.data.eval_fraction = 0.5
    config.eval = gs_eval.default_config()
    config.eval.n_sequences = 5
    config.eval.batch_size = 4
    config.eval.histogram_bins = 8
    return cfg, config


def test_evaluate_writes_table_details_and_plots(tmp_path):
    cfg, config = _study(tmp_path)
    workdir = str(tmp_path / "work")
    name, *_ = fake_run(
        workdir,
        "jumprelu",
        [1e-3, 2e-3],
        d_in=cfg.hidden_size,
        width=32,
        site="resid_post/1",
        norm_scale=3.0,
    )
    exported = export.export_run(workdir, name)
    topk_name, *_ = fake_run(
        workdir, "topk", [3], d_in=cfg.hidden_size, width=32, site="resid_post/1", norm_scale=3.0
    )
    (topk_folder,) = export.export_run(workdir, topk_name)
    rng = np.random.default_rng(0)
    d, m = cfg.hidden_size, 32  # same width as ours: one stacked group, one compiled program
    released = tmp_path / "average_l0_5" / "params.npz"
    released.parent.mkdir()
    np.savez(
        released,
        W_enc=rng.normal(size=(d, m)),
        W_dec=rng.normal(size=(m, d)) * 0.1,
        b_enc=np.zeros(m),
        b_dec=np.zeros(d),
        threshold=np.full(m, 1.0),
    )
    export.import_released(str(released), workdir, "resid_post/1", model_cfg=cfg)

    frame = gs_eval.evaluate(config, workdir)

    eval_dir = os.path.join(workdir, "eval")
    assert len(frame) == 4 and list(frame.columns) == list(table.COLUMNS)
    from_parquet = pd.read_parquet(os.path.join(eval_dir, "saes.parquet"))
    from_csv = pd.read_csv(os.path.join(eval_dir, "saes.csv"))
    pd.testing.assert_frame_equal(from_parquet.reset_index(drop=True), frame.reset_index(drop=True))
    np.testing.assert_allclose(from_csv["delta_loss"], frame["delta_loss"], rtol=1e-9)
    markdown = open(os.path.join(eval_dir, "saes.md")).read().splitlines()
    assert len(markdown) == 2 + 4 and markdown[0].startswith("| sae | model | site |")
    # One SAE per curve here: the equal-L0 comparison has its columns and no points.
    points = pd.read_csv(os.path.join(eval_dir, "equal_l0.csv"))
    assert list(points.columns) == list(equal_l0.POINT_COLUMNS) and points.empty
    rows = frame.set_index("sae")
    ours = rows.loc[os.path.relpath(exported[0], os.path.join(workdir, "saes"))]
    assert ours["architecture"] == "jumprelu" and ours["sweep_value"] == 1e-3
    tokens = data.sequences(config.data, model.load_tokenizer(config.model["path"]), "eval")[:5]
    n_ordinary = int(np.sum(~np.isin(tokens, [0, 1, 2])))  # BOS, EOS and pad are not evaluated
    assert ours["tokens_trained"] == 4096 and ours["eval_tokens"] == n_ordinary
    topk = rows.loc[os.path.relpath(topk_folder, os.path.join(workdir, "saes"))]
    assert topk["sweep_field"] == "k" and 0 < topk["l0"] <= 3
    theirs = rows.loc["resid_post/layer_1/width_32/gemmascope_average_l0_5"]
    assert theirs["source"] == "released" and theirs["site"] == "resid_post/1"
    for column in ("l0", "fvu", "mse", "delta_loss", "kl_div", "frac_dead", "clean_loss"):
        assert np.isfinite(frame[column]).all(), column
    assert (frame["kl_div"] >= 0).all() and (frame["clean_loss"] > 0).all()
    with open(os.path.join(eval_dir, "details.json")) as f:
        details = json.load(f)
    assert set(details) == set(frame["sae"])
    assert len(details[ours.name]["recon_loss_by_position"]) == 12
    assert details[ours.name]["recon_loss_by_position"][0] is None  # BOS is never evaluated
    hist = details[ours.name]["firing_histogram"]
    assert sum(hist["counts"]) + hist["dead"] == 32
    plots = sorted(os.listdir(os.path.join(eval_dir, "plots")))
    assert "resid_post_layer1_fidelity.png" in plots
    assert "resid_post_layer1_width32_gemmascope_position.png" in plots
    assert "resid_post_layer1_width32_jumprelu_firing.png" in plots
    assert not [f for f in os.listdir(eval_dir) if f.startswith(".")]  # no temp files left


def test_workdir_without_saes_is_a_clear_error(tmp_path):
    config = ml_collections.ConfigDict({"eval": gs_eval.default_config().to_dict()})
    with pytest.raises(FileNotFoundError, match="no SAEs under .*saes"):
        gs_eval.evaluate(config, str(tmp_path))


def test_bad_eval_config_is_a_clear_error(tmp_path):
    config = ml_collections.ConfigDict({"eval": gs_eval.default_config().to_dict()})
    config.eval.dense_threshold = 2.0
    with pytest.raises(ValueError, match=r"eval.dense_threshold must be in \(0, 1\)"):
        gs_eval.evaluate(config, str(tmp_path))
    config.eval.dense_threshold = 0.1
    config.eval.batch_size = 0
    with pytest.raises(ValueError, match="eval.batch_size must be an integer >= 1, got 0"):
        gs_eval.evaluate(config, str(tmp_path))
