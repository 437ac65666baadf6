r"""Trains the embedded default model: a tiny Gemma 2 on Tiny Shakespeare, saved in HF format.

No Gemma weights can be downloaded on every machine and SAEs on a random network teach nothing, so
gemmascope ships this model (gemmascope/assets/tiny_gemma, docs/embedded_model.md). The script
trains, on the head of the corpus (``gemmascope.assets.corpus.split_corpus``; the last ~10% is held
out):

1. a byte-level BPE tokenizer (``tokenizers``) with Gemma's special ids pad=0, eos=1, bos=2
   (unk=3, never produced: byte-level BPE covers every string), BOS prepended automatically;
2. a Gemma 2-architecture LM with gemmascope's own Flax/JAX forward pass
   (``gemmascope.model.forward``) and optax AdamW, on random 128-token windows (BOS + 127 tokens);

then writes config.json, model.safetensors (fp32), tokenizer.json, tokenizer_config.json and
training_summary.json (held-out loss, n-gram baselines, wall time) into ``--out_dir``, replacing the
folder in one rename.

Command (from the repository root):

    PYTHONPATH=. python experiments/train_tiny_lm.py --out_dir=gemmascope/assets/tiny_gemma

Runtime: 12.3 CPU-minutes (measured), i.e. about 6-8 min on 2 idle cores; 16.2 min of wall time
on a shared 2-core machine at load 2-8 (38.8 min at load 10-13). Reruns give bitwise-identical
weights.
Result (the shipped model): 1,247,360 parameters; held-out loss 3.919 nats/token against 6.060
for an add-one unigram and 4.443 for a smoothed bigram (docs/embedded_model.md).
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from gemmascope import assets, model

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0, 1, 2, 3: Gemma's order.
PAD_ID, EOS_ID, BOS_ID, UNK_ID = range(4)

_OUT_DIR = flags.DEFINE_string(
    "out_dir", str(assets.TINY_MODEL_DIR), "Folder to write the HF model and tokenizer into."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the parameter init and of the batch sampler.")
# Tokenizer and data.
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 2048, "BPE vocabulary, special tokens included.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 128, "Training sequence length, BOS included.")
# Architecture (Gemma 2 layout; docs/recipe.md#gemma-2).
_HIDDEN_SIZE = flags.DEFINE_integer("hidden_size", 128, "d_model.")
_INTERMEDIATE_SIZE = flags.DEFINE_integer("intermediate_size", 512, "d_mlp (gate and up width).")
_NUM_LAYERS = flags.DEFINE_integer("num_layers", 4, "Decoder blocks; even ones are local.")
_NUM_HEADS = flags.DEFINE_integer("num_heads", 4, "Query heads.")
_NUM_KV_HEADS = flags.DEFINE_integer("num_kv_heads", 2, "Key/value heads (GQA).")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 32, "Head width; query_pre_attn_scalar = head_dim.")
_SLIDING_WINDOW = flags.DEFINE_integer(
    "sliding_window", 64, "Local layers' window; shorter than seq_len so it binds."
)
# Optimisation.
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Sequences per step.")
_STEPS = flags.DEFINE_integer("steps", 1000, "Optimizer steps.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 3e-3, "Peak AdamW learning rate.")
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", 50, "Linear warm-up, then cosine to 10%.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 0.1, "AdamW decoupled weight decay.")
_INIT_STD = flags.DEFINE_float("init_std", 0.02, "Std of the random init (HF's scheme).")
_LOG_EVERY = flags.DEFINE_integer("log_every", 100, "Steps between training-loss log lines.")

# ---------------------------------------------------------------------------------- tokenizer


def train_tokenizer(text: str, vocab_size: int):
    """Trains a byte-level BPE tokenizer on ``text`` with Gemma's special-token ids.

    Byte-level BPE (GPT-2's pre-tokenizer) encodes any string without an unknown token, so the
    model can read whatever corpus a user brings; the 256 byte symbols are always in the vocab.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` that prepends BOS (id 2) to every sequence.
    """
    from transformers import PreTrainedTokenizerFast  # Heavy import, only needed here.

    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(
            f"vocab_size must be at least {len(SPECIAL_TOKENS) + 256}, got {vocab_size}"
        )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([text], trainer)
    # Like Gemma's tokenizer: BOS first, no EOS appended.
    bpe.post_processor = processors.TemplateProcessing(
        single="<bos> $A",
        pair="<bos> $A <bos> $B",
        special_tokens=[("<bos>", BOS_ID)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    if ids != [PAD_ID, EOS_ID, BOS_ID, UNK_ID]:
        raise RuntimeError(f"special tokens {SPECIAL_TOKENS} got ids {ids}, expected 0..3")
    return tokenizer


def save_tokenizer(tokenizer, folder: Path) -> None:
    """Writes tokenizer.json + tokenizer_config.json that ``AutoTokenizer`` loads as saved.

    The config names the generic fast class (not GemmaTokenizer, which would rebuild Gemma's own
    SentencePiece-style pipeline around our vocabulary) and states add_bos_token explicitly.
    """
    tokenizer.save_pretrained(str(folder))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(
        tokenizer_class="PreTrainedTokenizerFast",
        add_bos_token=True,
        add_eos_token=False,
    )
    config.pop("backend", None)
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def encode(tokenizer, text: str) -> np.ndarray:
    """The token stream of ``text`` (int32, no BOS)."""
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)


# ---------------------------------------------------------------------------------- batches


def sample_batch(rng: np.random.Generator, ids: np.ndarray, batch: int, seq_len: int) -> np.ndarray:
    """``batch`` random windows of ``seq_len - 1`` tokens from ``ids``, each behind a BOS."""
    starts = rng.integers(0, ids.size - (seq_len - 1) + 1, size=batch)
    windows = ids[starts[:, None] + np.arange(seq_len - 1)[None, :]]
    return np.concatenate([np.full((batch, 1), BOS_ID, np.int32), windows], axis=1)


def heldout_sequences(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """Consecutive non-overlapping windows of ``ids`` (the tail remainder dropped), BOS first."""
    n = ids.size // (seq_len - 1)
    if n == 0:
        raise ValueError(f"{ids.size} held-out tokens cannot fill one sequence of {seq_len}")
    windows = ids[: n * (seq_len - 1)].reshape(n, seq_len - 1)
    return np.concatenate([np.full((n, 1), BOS_ID, np.int32), windows], axis=1)


# ---------------------------------------------------------------------------------- model


def model_config(vocab_size: int) -> model.Gemma2Config:
    """The tiny Gemma 2: GQA, local/global alternation with a binding window, Gemma's softcaps."""
    return model.Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=_HIDDEN_SIZE.value,
        intermediate_size=_INTERMEDIATE_SIZE.value,
        num_hidden_layers=_NUM_LAYERS.value,
        num_attention_heads=_NUM_HEADS.value,
        num_key_value_heads=_NUM_KV_HEADS.value,
        head_dim=_HEAD_DIM.value,
        query_pre_attn_scalar=_HEAD_DIM.value,  # As Gemma 2 2B/9B: 1/sqrt(head_dim).
        sliding_window=_SLIDING_WINDOW.value,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        max_position_embeddings=_SEQ_LEN.value,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
    )


def next_token_loss(cfg: model.Gemma2Config, params, tokens: jax.Array) -> jax.Array:
    """Mean cross-entropy (nats) of every token after the first, given the ones before it."""
    logits, _ = model.forward(cfg, params, tokens)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
    return losses.mean()


def make_optimizer(steps: int) -> optax.GradientTransformation:
    """AdamW with global-norm clipping, linear warm-up and cosine decay to 10% of the peak."""
    if steps <= _WARMUP_STEPS.value:
        raise ValueError(f"--steps ({steps}) must exceed --warmup_steps ({_WARMUP_STEPS.value})")
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=_LEARNING_RATE.value,
        warmup_steps=_WARMUP_STEPS.value,
        decay_steps=steps,
        end_value=0.1 * _LEARNING_RATE.value,
    )
    # Norm offsets (1-D) are not decayed: decay would pull every gain towards 1 for no reason.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=_WEIGHT_DECAY.value, mask=decay_mask),
    )


def make_train_step(cfg: model.Gemma2Config, optimizer: optax.GradientTransformation):
    """A jitted ``step(state, tokens) -> (state, loss)``; the state is donated."""

    def step(state, tokens):
        loss, grads = jax.value_and_grad(next_token_loss, argnums=1)(cfg, state["params"], tokens)
        updates, opt = optimizer.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

    return jax.jit(step, donate_argnums=(0,))


def evaluate(cfg: model.Gemma2Config, params, sequences: np.ndarray, batch: int = 64) -> float:
    """Held-out cross-entropy in nats/token over every predicted position of ``sequences``."""
    loss_fn = jax.jit(lambda p, t: next_token_loss(cfg, p, t))
    total, count = 0.0, 0
    for start in range(0, len(sequences), batch):
        chunk = sequences[start : start + batch]
        total += float(loss_fn(params, jnp.asarray(chunk))) * chunk.shape[0]
        count += chunk.shape[0]
    return total / count


# ---------------------------------------------------------------------------------- output


def write_folder(out_dir: Path, cfg, params, tokenizer, summary: dict) -> None:
    """Writes the HF folder beside ``out_dir`` and swaps it in, so a crash leaves the old one."""
    staging = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_hf(cfg, params, staging)
    save_tokenizer(tokenizer, staging)
    (staging / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for path in staging.iterdir():  # save_hf's temp files are private (0600); ship them readable.
        path.chmod(0o644)
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def best_bigram_cross_entropy(train_ids, heldout_ids, vocab_size) -> tuple[float, float]:
    """The bigram baseline at its best prior strength on the held-out text (a strong baseline)."""
    scores = {
        k: assets.corpus.bigram_cross_entropy(train_ids, heldout_ids, vocab_size, k)
        for k in (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
    }
    best = min(scores, key=scores.get)
    return scores[best], best


def main(argv):
    """Trains the tokenizer and the model, then writes the HF folder in one rename."""
    del argv
    start = time.time()
    out_dir = Path(_OUT_DIR.value).resolve()
    train_text, heldout_text = assets.corpus.split_corpus(assets.CORPUS_PATH.read_text())

    tokenizer = train_tokenizer(train_text, _VOCAB_SIZE.value)
    vocab_size = len(tokenizer)
    train_ids, heldout_ids = encode(tokenizer, train_text), encode(tokenizer, heldout_text)
    heldout = heldout_sequences(heldout_ids, _SEQ_LEN.value)
    logging.info(
        "tokenizer: vocab %d, %d train tokens (%.2f chars/token), %d held-out tokens, %d held-out "
        "sequences; %.1fs",
        vocab_size,
        train_ids.size,
        len(train_text) / train_ids.size,
        heldout_ids.size,
        len(heldout),
        time.time() - start,
    )

    cfg = model_config(vocab_size)
    params = model.init_params(cfg, jax.random.key(_SEED.value), std=_INIT_STD.value)
    optimizer = make_optimizer(_STEPS.value)
    state = {"params": params, "opt": optimizer.init(params)}
    train_step = make_train_step(cfg, optimizer)
    logging.info("model: %d parameters, %s", cfg.n_params(), cfg)

    rng = np.random.default_rng(_SEED.value)
    train_start, recent = time.time(), []
    for step in range(1, _STEPS.value + 1):
        batch = sample_batch(rng, train_ids, _BATCH_SIZE.value, _SEQ_LEN.value)
        state, loss = train_step(state, jnp.asarray(batch))
        recent.append(loss)
        if step % _LOG_EVERY.value == 0 or step == _STEPS.value:
            mean_loss = float(np.mean(jax.device_get(recent)))
            if not np.isfinite(mean_loss):
                raise FloatingPointError(f"training loss is {mean_loss} at step {step}")
            logging.info(
                "step %d/%d: train loss %.4f, %.0fs",
                step,
                _STEPS.value,
                mean_loss,
                time.time() - train_start,
            )
            recent = []
    train_seconds = time.time() - train_start

    heldout_loss = evaluate(cfg, state["params"], heldout)
    # The n-gram baselines score the same targets as the model: every held-out token.
    unigram = assets.corpus.unigram_cross_entropy(train_ids, heldout_ids, vocab_size)
    bigram, bigram_prior = best_bigram_cross_entropy(train_ids, heldout_ids, vocab_size)
    summary = {
        "command": "PYTHONPATH=. python " + " ".join(sys.argv),
        "n_params": cfg.n_params(),
        "train_tokens": int(train_ids.size),
        "heldout_tokens": int(heldout_ids.size),
        "heldout_sequences": len(heldout),
        "tokens_seen": _STEPS.value * _BATCH_SIZE.value * _SEQ_LEN.value,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - start, 1),
        "heldout_loss": round(heldout_loss, 4),
        "unigram_add_one_loss": round(unigram, 4),
        "bigram_loss": round(bigram, 4),
        "bigram_prior_strength": bigram_prior,
        "flags": {name: flags.FLAGS[name].value for name in flags.FLAGS if name in _OWN_FLAGS},
    }
    write_folder(out_dir, cfg, state["params"], tokenizer, summary)
    logging.info("wrote %s: %s", out_dir, json.dumps(summary))


_OWN_FLAGS = {
    holder.name
    for holder in (
        _OUT_DIR,
        _SEED,
        _VOCAB_SIZE,
        _SEQ_LEN,
        _HIDDEN_SIZE,
        _INTERMEDIATE_SIZE,
        _NUM_LAYERS,
        _NUM_HEADS,
        _NUM_KV_HEADS,
        _HEAD_DIM,
        _SLIDING_WINDOW,
        _BATCH_SIZE,
        _STEPS,
        _LEARNING_RATE,
        _WARMUP_STEPS,
        _WEIGHT_DECAY,
        _INIT_STD,
        _LOG_EVERY,
    )
}

if __name__ == "__main__":
    app.run(main)
