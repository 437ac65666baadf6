"""Sparse autoencoders: JumpReLU and Gated (Gemma Scope), TopK, BatchTopK, ReLU-L1, Matryoshka.

Pure JAX: params are flat dicts of arrays, every function is traceable, so a trainer can stack
SAEs on a sweep axis, vmap the step and shard it. The math and the config fields are in
docs/sae.md; the contract with the trainer is docs/internals.md ("sae").

Synopsis::

    from gemmascope import sae
    arch = sae.ARCHITECTURES["jumprelu"]
    cfg = arch.default_config()
    params = arch.init(key, d_in, width, cfg)
    f = arch.encode(params, x, cfg); x_hat = arch.decode(params, f, cfg)
    loss, metrics = arch.loss(params, x, arch.coeffs(cfg, step_index), cfg)
    tx = sae.optimizer(cfg); opt_state = tx.init(params)
    step = sae.make_train_step("jumprelu", cfg)
    params, opt_state, metrics = step(params, opt_state, x, step_index, sweep_value)
    jr = sae.to_jumprelu(params, "jumprelu", cfg)          # a TrainingForm
    cfg.update(sae.recipes.get("short_run", "jumprelu", total_steps=3000))   # named recipes
    problem = sae.synthetic.Problem(d=48, n_features=192, mean_l0=4.0)     # known-answer data
    f = sae.encode_training_form(jr, x); x_hat = sae.decode_training_form(jr, f)
    # Transcoders (docs/transcoders.md): cfg.d_out = d_out; cfg.pre_encoder_bias = False
    loss, metrics = arch.loss(params, x, coeffs, cfg, target=y)   # y (B, d_out)
"""

# Training form, optimisation, architectures.
# Named recipes (Gemma Scope's, short runs) and synthetic problems with a known answer.
from gemmascope.sae import recipes, synthetic  # noqa: E402  (after the registry they use)
from gemmascope.sae.inference import (
    TrainingForm,
    TranscoderForm,
    decode_training_form,
    decode_transcoder_form,
    encode_training_form,
    encode_transcoder_form,
)
from gemmascope.sae.optim import BUFFER_KEYS, learning_rate, linear_warmup, optimizer
from gemmascope.sae.registry import (
    ARCHITECTURES,
    Architecture,
    check_architecture,
    get,
    supports_transcoders,
)
from gemmascope.sae.train_step import batch_loss, check_sweep_values, make_train_step, split_batch


def to_jumprelu(params: dict, name: str, cfg) -> TrainingForm:
    """Converts one SAE's training-form params to its JumpReLU form in training units.

    The form is that of docs/recipe.md#params-npz before folding (``export.fold``).

    Args:
      params: training-form params of ONE SAE (no sweep axis).
      name: architecture name.
      cfg: the architecture config the SAE was trained with.

    Returns:
      a :class:`TrainingForm` (a Mapping) W_enc (d, M), W_dec (M, d), b_enc (M,), b_dec (d,),
      threshold (M,), float32, in training units with the pre-encoder bias:
      f = relu(π)·1[π > θ], π = (x − b_dec) W_enc + b_enc (:func:`encode_training_form`).

    Raises:
      KeyError: unknown architecture.
      ValueError: the architecture has no JumpReLU form (TopK's per-token k is not a threshold).
    """
    return get(name).to_jumprelu(params, cfg)


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "BUFFER_KEYS",
    "TrainingForm",
    "TranscoderForm",
    "batch_loss",
    "check_architecture",
    "check_sweep_values",
    "decode_training_form",
    "decode_transcoder_form",
    "encode_training_form",
    "encode_transcoder_form",
    "get",
    "learning_rate",
    "linear_warmup",
    "make_train_step",
    "optimizer",
    "recipes",
    "split_batch",
    "supports_transcoders",
    "synthetic",
    "to_jumprelu",
]
