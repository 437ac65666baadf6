"""A tiny study with exported SAEs at three kinds of site, and a numpy oracle of its latents.

``build_study`` saves a random tiny Gemma 2 with a word tokenizer, a corpus and a study config,
and places SAEs in ``workdir/saes``: JumpReLU and TopK exports of trainer-shaped runs at
``resid_post/1``, a released-format JumpReLU at ``attn_z/0`` and one at ``mlp_out/1``.
``fresh_activations`` is the oracle: the model's own forward pass on whole sequences and the
released-form rules written in float64 numpy from the params.npz files (not gemmascope's encoder).
"""

import os
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from gemmascope import data, export, inspect, model
from gemmascope import eval as gs_eval

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "eval"))
sys.path.insert(0, os.path.join(HERE, "..", "export"))
from fake_training_run import fake_run  # noqa: E402
from tiny_model import random_params  # noqa: E402

WORDS = "the king and queen of a far land sent word to all their people at dawn".split()


def tiny_config():
    return model.presets.tiny(
        num_hidden_layers=2,
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        query_pre_attn_scalar=8,
        vocab_size=64,
    )


def _save_model(model_dir):
    cfg = tiny_config()
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
    return cfg


def _released(path, d, m, seed, threshold):
    rng = np.random.default_rng(seed)
    w_dec = rng.normal(size=(m, d))
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    os.makedirs(os.path.dirname(path))
    np.savez(
        path,
        W_enc=rng.normal(size=(d, m)),
        W_dec=w_dec,
        b_enc=rng.normal(size=m) * 0.1,
        b_dec=rng.normal(size=d) * 0.1,
        threshold=rng.uniform(0.5, 1.5, size=m) * threshold,
    )
    return path


def build_study(root, *, n_eval=6):
    """Returns (model config, study config, workdir) of a tiny study with 4 SAEs in saes/."""
    root = str(root)
    cfg = _save_model(os.path.join(root, "tiny_model"))
    rng = np.random.default_rng(0)
    corpus = os.path.join(root, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n\n".join(" ".join(rng.choice(WORDS, 30)) for _ in range(40)))
    config = ml_collections.ConfigDict()
    config.name = "tiny_inspect"
    config.model = {"path": os.path.join(root, "tiny_model"), "dtype": "float32"}
    config.data = data.default_config()
    config.data.corpus = corpus
    config.data.seq_len = 12
    config.data.eval_fraction = 0.5
    config.eval = gs_eval.default_config()
    config.inspect = inspect.default_config()
    config.inspect.n_sequences = n_eval
    config.inspect.batch_size = 4
    config.inspect.top_k = 5
    config.inspect.context_before = 3
    config.inspect.context_after = 2
    config.inspect.sample_size = 8
    config.inspect.quantiles = (0.0, 0.5)
    config.inspect.examples_per_quantile = 2
    config.inspect.n_logit_tokens = 4
    config.inspect.n_neighbours = 3
    workdir = os.path.join(root, "work")
    d = cfg.hidden_size
    for arch, values in (("jumprelu", [1e-3]), ("topk", [3])):
        name, *_ = fake_run(
            workdir, arch, values, d_in=d, width=32, site="resid_post/1", norm_scale=3.0
        )
        export.export_run(workdir, name)
    for site, seed in (("attn_z/0", 1), ("mlp_out/1", 2)):
        npz = os.path.join(root, site.replace("/", "_"), "average_l0_5", "params.npz")
        _released(npz, model.sites.dim(cfg, site), 24, seed, threshold=1.0)
        export.import_released(npz, workdir, site, model_cfg=cfg)
    return cfg, config, workdir


def eval_tokens(config):
    """The scanned sequences and their scored positions, computed as a user would."""
    tokenizer = model.load_tokenizer(config.model["path"])
    tokens = data.sequences(config.data, tokenizer, split="eval")[: config.inspect.n_sequences]
    positions = ~np.isin(tokens, [0, 1, 2])
    return np.asarray(tokens), positions


def numpy_encode(params, config, x):
    """The released-form encoder in float64 numpy (docs/metrics.md#inference)."""
    x = np.asarray(x, np.float64)
    pre = x @ params["W_enc"].astype(np.float64) + params["b_enc"].astype(np.float64)
    encoder = config.get("encoder") or {"type": "jumprelu"}
    if encoder["type"] == "topk":
        kth = np.sort(pre, axis=-1)[..., -encoder["k"]][..., None]
        return np.where(pre >= kth, np.maximum(pre, 0.0), 0.0)
    return np.where(pre > params["threshold"], np.maximum(pre, 0.0), 0.0)


def fresh_activations(model_cfg, config, folder, tokens, positions):
    """(N, T, M): each SAE latent's activation at every token, 0 at unscored tokens."""
    sae_config = export.layout.read_config(folder)
    params = export.load_npz(os.path.join(folder, "params.npz"))
    model_params = model.load_hf(config.model["path"])[1]
    _, acts = model.forward(
        model_cfg, model_params, jnp.asarray(tokens, jnp.int32), capture=[sae_config["site"]]
    )
    f = numpy_encode(params, sae_config, np.asarray(acts[sae_config["site"]]))
    return np.where(positions[..., None], f, 0.0), params, sae_config
