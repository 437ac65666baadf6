"""JumpReLU SAE trained with the Gemma Scope recipe (docs/recipe.md#jumprelu).

Forward (training form, pre-encoder bias):
    π = (x − b_dec) W_enc + b_enc,   f = π·H(π − θ),   x̂ = f W_dec + b_dec.
Loss per token, averaged over the batch (docs/recipe.md#jumprelu-loss):
    ||x − x̂||² + λ_t·Σ_i H(π_i − θ_i)
where λ_t is λ warmed up linearly over ``sparsity_warmup_steps`` and H carries the rectangle STE of
docs/recipe.md#jumprelu-ste (module :mod:`gemmascope.sae.ste`). λ is either given
(``sparsity_form = "coeff"``, Gemma Scope) or steered to a target L0 (``"target_l0"``): the
buffer ``log_sparsity_coeff`` starts at log ``sparsity_coeff`` and after every step past the
warmup moves by ``target_l0_rate · clip(log(L0 / target_l0), −1, 1)`` (dual ascent on the
constraint E[L0] = target, docs/sae.md#target-l0), so the SAE trains on the Gemma Scope loss with
the λ that gives the L0 asked for. ``"quadratic"`` is Gemma Scope 2's penalty as SAELens 6 reads
it: per token λ_t·(2/target)·(L0 − target)² with L0 = Σ_i H(π_i − θ_i) (the same STE), averaged
over the batch (docs/sae.md#quadratic-l0). Any form may add the frequency penalty against dense
latents (``freq_penalty_scale`` ω > 0; docs/sae.md#frequency-penalty): by default
(``freq_penalty_form = "hinge"``) c·Σ_i relu(p_i − ω)²/ω, with p_i latent i's firing frequency in
the batch (its fired count over the tokens, through the step's STE, so a dense latent's θ rises)
and c the sparsity term's λ_t (or ``freq_penalty_coeff``); or (``"quadratic"``) the
quadratic-frequency term of the GDM team's 2025 progress update, c·Σ_i p_i²/ω. θ is fp32, stored as
``log_threshold`` (θ = exp) or ``threshold`` (raw) by ``cfg.threshold_param``
(docs/recipe.md#short-runs).

Synopsis::

    cfg = default_config()
    params = init(key, d_in, width, cfg)
    loss, metrics = loss(params, x, coeffs(cfg, step_index, sweep_value), cfg)
"""

import math

import jax
import jax.numpy as jnp
import ml_collections

from gemmascope.sae import auxk, dictionary, inference, losses, optim, sparse_support, ste
from gemmascope.sae import config as config_lib

NAME = "jumprelu"
# L0 below this counts as this in the target_l0 form's log error (an empty batch is a finite step).
_L0_FLOOR = 1e-2
# log λ stays in [log 1e-8, log 1e4]: far outside any useful λ, but finite.
_LOG_COEFF_RANGE = (math.log(1e-8), math.log(1e4))
# The field a sweep varies in the default (coefficient) form; see sweep_field() for target_l0.
SWEEP_FIELD = "sparsity_coeff"
# The sparsity penalties (``sparsity_form``; module docstring): Gemma Scope's λ·L0, the batch-mean
# L0 steered to a target, Gemma Scope 2's per-token quadratic pull to a target.
SPARSITY_FORMS = ("coeff", "target_l0", "quadratic")
# The frequency penalty's forms (``freq_penalty_form``; frequency_penalty()).
FREQ_PENALTY_FORMS = ("quadratic", "hinge")


def default_config() -> ml_collections.ConfigDict:
    """Gemma Scope defaults (docs/recipe.md#jumprelu), threshold and sparsity-form options."""
    cfg = config_lib.base_config()
    # λ of the L0 penalty in the "coeff" form (GS: 6e-4 gave L0 ≈ 50 on 9B L20, 1e-3 on 131k SAEs).
    cfg.sparsity_coeff = 1e-3
    # "coeff": λ·L0 per token with λ = sparsity_coeff (GS).  "target_l0": the same loss with λ
    # steered (from sparsity_coeff) so that the batch L0 tracks target_l0 (docs/sae.md#target-l0).
    # "quadratic": λ·(2/target_l0)·(L0 − target_l0)² per token (Gemma Scope 2, as SAELens 6
    # implements it; docs/sae.md#quadratic-l0).
    cfg.sparsity_form = "coeff"
    # The L0 asked for in the "target_l0" and "quadratic" forms.
    cfg.target_l0 = 32.0
    # "target_l0" form: change of log λ per step at the largest L0 error (|log(L0/target)| >= 1).
    cfg.target_l0_rate = 0.02
    # Frequency penalty against dense latents (docs/sae.md#frequency-penalty), on p_i each
    # latent's firing frequency in the batch. ω (this field) is its frequency scale; 0 = off.
    # In the hinge form latents settle a little above ω: set it under the frequency that counts
    # as dense (the demo: 0.05 for the eval's 10%).
    cfg.freq_penalty_scale = 0.0
    # Its form: "hinge" c·Σ_i relu(p_i − ω)²/ω (only latents firing on more than ω of the tokens
    # pay; measured best on the demo) or "quadratic" c·Σ_i p_i²/ω (GDM's quadratic-frequency
    # loss, ω ~0.1: every latent pays, ordinary ones as an extra L0 penalty).
    cfg.freq_penalty_form = "hinge"
    # Its coefficient c: None = the sparsity term's (warmed-up, or steered) λ (with the quadratic
    # form in the coefficient form: GDM's λ·Σ_i p_i·(1 + p_i/ω)); a number = its own c, warmed up
    # like λ.
    cfg.freq_penalty_coeff = None
    # STE kernel bandwidth ε (GS: 1e-3, valid for E||x||² = 1 inputs).
    cfg.bandwidth = 1e-3
    # Initial threshold θ for every latent (GS: 1e-3).
    cfg.threshold_init = 1e-3
    # "log": train log θ (tutorial / JR pseudo-code); "raw": train θ itself (better for short runs).
    cfg.threshold_param = "log"
    # AuxK on dead latents (docs/sae.md#dead-latents): off in Gemma Scope's recipe (α = 0); the
    # short-run recipe turns it on to revive latents whose threshold outgrew their pre-activations.
    auxk.add_config_fields(cfg)
    cfg.auxk_alpha = 0.0
    # The sparse path at low L0 (docs/sae.md#sparse-path): 0 = the dense products (default);
    # C > 0 = the decoder and the backward products from each token's support (active latents
    # and STE window) in C slots, the dense products for any batch with a token fuller than C.
    cfg.sparse_capacity = 0
    # Who computes the sparse path's listing and products: "auto" (the compiled CPU kernels on
    # the CPU backend, XLA's gathers and scatter-adds elsewhere), "xla" or "cpu".
    cfg.sparse_kernels = "auto"
    return cfg


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid field."""
    config_lib.check_base(cfg)
    config_lib.check_in(cfg, "sparsity_form", SPARSITY_FORMS)
    config_lib.check_in(cfg, "threshold_param", ("log", "raw"))
    config_lib.check_positive(cfg, "sparsity_coeff", allow_zero=cfg.sparsity_form == "coeff")
    config_lib.check_positive(cfg, "bandwidth", "threshold_init", "target_l0", "target_l0_rate")
    check_frequency_penalty(cfg)
    auxk.validate(cfg)
    capacity = cfg.get("sparse_capacity", 0)
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
        raise ValueError(
            f"SAE config field 'sparse_capacity' must be an int >= 0 (0: dense products; C > 0: "
            f"the sparse path with C support slots per token), got {capacity!r}."
        )
    if "sparse_kernels" in cfg:  # configs written before the field existed lack it
        config_lib.check_in(cfg, "sparse_kernels", sparse_support.KERNELS)


def check_frequency_penalty(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError unless ω is 0 (off) or in (0, 1] and the coefficient None or >= 0."""
    scale = cfg.get("freq_penalty_scale", 0.0)
    coeff = cfg.get("freq_penalty_coeff", None)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 <= scale <= 1.0:
        raise ValueError(
            f"SAE config field 'freq_penalty_scale' must be 0 (no frequency penalty) or a firing "
            f"frequency in (0, 1] (e.g. 0.1: latents firing on more than ~10% of tokens pay more "
            f"than their L0), got {scale!r}."
        )
    if coeff is not None and (
        isinstance(coeff, bool) or not isinstance(coeff, (int, float)) or coeff < 0
    ):
        raise ValueError(
            f"SAE config field 'freq_penalty_coeff' must be None (the sparsity term's λ) or a "
            f"number >= 0, got {coeff!r}."
        )
    form = cfg.get("freq_penalty_form", "hinge")
    if form not in FREQ_PENALTY_FORMS:
        raise ValueError(
            f"SAE config field 'freq_penalty_form' must be one of {FREQ_PENALTY_FORMS} "
            f"(docs/sae.md#frequency-penalty), got {form!r}."
        )
    if coeff is not None and scale == 0:
        raise ValueError(
            f"SAE config field 'freq_penalty_coeff' is {coeff!r} but 'freq_penalty_scale' is 0, "
            "which turns the frequency penalty off: set freq_penalty_scale (e.g. 0.1) too, or "
            "leave freq_penalty_coeff None."
        )


def sweep_field(cfg: ml_collections.ConfigDict) -> str:
    """The field a sweep varies: ``target_l0`` in the target_l0 and quadratic forms, else λ."""
    return "target_l0" if cfg.sparsity_form in ("target_l0", "quadratic") else SWEEP_FIELD


def init(key: jax.Array, d_in: int, width: int, cfg: ml_collections.ConfigDict) -> dict:
    """Gemma Scope init (docs/recipe.md#init).

    Unit-norm He-uniform W_dec, W_enc = W_dec^T (scaled by the init fields of
    docs/sae.md#initialisation), zero biases, θ = threshold_init; in the target_l0 form the
    buffer ``log_sparsity_coeff`` = log sparsity_coeff.
    """
    config_lib.check_shape(d_in, width)
    validate(cfg)
    params = dictionary.init_maps(key, d_in, width, cfg)
    theta = jnp.full((width,), cfg.threshold_init, jnp.float32)
    if cfg.threshold_param == "log":
        params["log_threshold"] = jnp.log(theta)
    else:
        params["threshold"] = theta
    if cfg.sparsity_form == "target_l0":
        params["log_sparsity_coeff"] = jnp.log(jnp.asarray(cfg.sparsity_coeff, jnp.float32))
    if cfg.auxk_alpha > 0:
        params["tokens_since_fired"] = auxk.init_counters(width)
    return params


def threshold(params: dict, cfg: ml_collections.ConfigDict) -> jax.Array:
    """The fp32 threshold θ (M,) whichever way it is parameterised."""
    if cfg.threshold_param == "log":
        return jnp.exp(params["log_threshold"].astype(jnp.float32))
    return params["threshold"].astype(jnp.float32)


def encode(params: dict, x: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """Latent activations f = π·H(π − θ), (B, d) -> (B, M)."""
    pi = dictionary.pre_activations(params, x, cfg)
    return ste.jumprelu(pi, threshold(params, cfg), cfg.bandwidth)


def decode(params: dict, f: jax.Array, cfg: ml_collections.ConfigDict, x=None) -> jax.Array:
    """Reconstruction x̂ = f W_dec + b_dec (+ x W_skip for a skip-transcoder, given x)."""
    del cfg
    return dictionary.decode(params, f, x)


def coeffs(cfg: ml_collections.ConfigDict, step_index, sweep_value=None) -> dict:
    """This step's traced loss coefficients; ``sweep_value`` overrides ``cfg[sweep_field(cfg)]``.

    In the target_l0 form ``sparsity_coeff`` is the warmup factor (λ itself is the buffer); in
    the quadratic form it is the warmed-up λ of the quadratic penalty. A frequency penalty with
    its own coefficient adds ``freq_penalty_coeff``, warmed up like λ.
    """
    form = _form_coeffs(cfg, step_index, sweep_value)
    return _with_frequency_coeff(form, cfg, step_index)


def _form_coeffs(cfg: ml_collections.ConfigDict, step_index, sweep_value) -> dict:
    """The coefficients of the sparsity form (``coeffs`` without the frequency penalty's)."""
    if cfg.sparsity_form == "quadratic":
        target = cfg.target_l0 if sweep_value is None else sweep_value
        return {
            "sparsity_coeff": optim.linear_warmup(
                cfg.sparsity_coeff, step_index, cfg.sparsity_warmup_steps
            ),
            "target_l0": jnp.asarray(target, jnp.float32),
        }
    if cfg.sparsity_form == "target_l0":
        target = cfg.target_l0 if sweep_value is None else sweep_value
        return {
            "sparsity_coeff": optim.linear_warmup(1.0, step_index, cfg.sparsity_warmup_steps),
            "target_l0": jnp.asarray(target, jnp.float32),
        }
    base = cfg.sparsity_coeff if sweep_value is None else sweep_value
    return {"sparsity_coeff": optim.linear_warmup(base, step_index, cfg.sparsity_warmup_steps)}


def _with_frequency_coeff(coeffs: dict, cfg, step_index) -> dict:
    """``coeffs`` plus ``freq_penalty_coeff`` (warmed up) when the penalty has its own c."""
    if cfg.get("freq_penalty_scale", 0.0) > 0 and cfg.get("freq_penalty_coeff") is not None:
        coeffs["freq_penalty_coeff"] = optim.linear_warmup(
            cfg.freq_penalty_coeff, step_index, cfg.sparsity_warmup_steps
        )
    return coeffs


def loss(
    params: dict,
    x: jax.Array,
    coeffs: dict,
    cfg: ml_collections.ConfigDict,
    target=None,
    reconstruct=None,
):
    """Training loss and metrics for a batch x (B, d); see the module docstring.

    A transcoder reconstructs ``target`` (B, d_out) instead of x (docs/transcoders.md).
    ``reconstruct(f) -> (x̂, reconstruction term)`` replaces the plain decoder and its squared
    error in the total (Matryoshka JumpReLU's nested prefix losses); ``recon_loss`` stays the
    full reconstruction's error.
    """
    target = x if target is None else target
    theta = threshold(params, cfg)
    l0_per_token = None
    if cfg.get("sparse_capacity", 0) and reconstruct is None:
        decoded, fired, l0_per_token, pi = sparse_support.encode_decode(
            x.astype(jnp.float32),
            params["W_enc"],
            params["b_enc"],
            params["b_dec"],
            theta,
            params["W_dec"],
            bandwidth=cfg.bandwidth,
            capacity=cfg.sparse_capacity,
            centre=cfg.pre_encoder_bias,
            with_pi=cfg.auxk_alpha > 0,
            kernels=sparse_support.kernels_for(cfg.get("sparse_kernels", "auto")),
        )
        f, term = None, None
        x_hat = dictionary.add_output_biases(params, decoded, x)
    else:
        pi = dictionary.pre_activations(params, x, cfg)
        f, fired = ste.jumprelu_and_fired(pi, theta, cfg.bandwidth)
        if reconstruct is None:
            x_hat, term = dictionary.decode(params, f, x), None
        else:
            x_hat, term = reconstruct(f)
    recon = jnp.mean(losses.squared_error(target, x_hat))
    n_tokens = x.size // x.shape[-1]
    mean_l0 = jnp.sum(fired) / n_tokens
    sparsity, coeff = sparsity_term(params, pi, theta, mean_l0, coeffs, cfg, l0_per_token)
    penalised = cfg.get("freq_penalty_scale", 0.0) > 0
    freq = frequency_penalty(fired / n_tokens, coeff, coeffs, cfg) if penalised else 0.0
    aux = auxk.auxk_loss(params, pi, target, x_hat, cfg)
    total = (recon if term is None else term) + sparsity + freq + aux
    metrics = losses.batch_metrics(
        target,
        x_hat,
        f,
        loss=total,
        recon_loss=recon,
        sparsity_loss=sparsity,
        aux_loss=aux,
        fired=fired,
    )
    metrics["sparsity_coeff"] = jnp.asarray(coeff, jnp.float32)
    if penalised:
        metrics["freq_penalty"] = jnp.asarray(freq, jnp.float32)
    if cfg.sparsity_form in ("target_l0", "quadratic"):
        metrics["target_l0"] = coeffs["target_l0"]
    return total, metrics


def sparsity_term(params: dict, pi, theta, mean_l0, coeffs: dict, cfg, l0_per_token=None) -> tuple:
    """(the sparsity penalty of ``cfg.sparsity_form``, the λ it used); see the module docstring.

    ``mean_l0`` is the batch's mean Σ_i H(π_i − θ_i) with the step's estimator (the fired
    counts of ``ste.jumprelu_and_fired`` over the token count). ``l0_per_token`` (B,), the same
    sums per token with the step STE, replaces their computation from ``pi`` in the quadratic
    form (the sparse path has them already).
    """
    coeff = coeffs["sparsity_coeff"]
    if cfg.sparsity_form == "target_l0":
        coeff = coeff * jnp.exp(jax.lax.stop_gradient(params["log_sparsity_coeff"]))
    if cfg.sparsity_form == "quadratic":
        target_l0 = coeffs["target_l0"]
        if l0_per_token is None:
            l0_per_token = jnp.sum(ste.step(pi, theta, cfg.bandwidth), axis=-1)
        return coeff * jnp.mean(2.0 / target_l0 * jnp.square(l0_per_token - target_l0)), coeff
    return coeff * mean_l0, coeff


def frequency_penalty(frequency, coeff, coeffs: dict, cfg) -> jax.Array:
    """The penalty on dense latents of ``cfg.freq_penalty_form`` (docs/sae.md#frequency-penalty).

    ``frequency`` (M,) is each latent's firing frequency in the batch, p_i = fired_i / n_tokens,
    with the step's estimator (``ste.jumprelu_and_fired``'s count). "quadratic" is GDM's
    c·Σ_i p_i²/ω: its θ_i gradient is (2c·p_i/ω)·(1/n)·Σ_b −(1/ε)K((π_bi − θ_i)/ε), so gradient
    descent raises every threshold in proportion to how often its latent fires, and a latent
    firing on p ≳ ω tokens pays more than its share of the L0 term. "hinge" is
    c·Σ_i relu(p_i − ω)²/ω: the same gradient with p_i − ω in place of p_i for the latents firing
    on more than ω of the tokens, and none for the others. c is ``coeff`` (the λ the sparsity
    term used) unless ``cfg.freq_penalty_coeff`` gives its own (``coeffs["freq_penalty_coeff"]``,
    warmed up).
    """
    c = coeffs.get("freq_penalty_coeff", coeff)
    scale = cfg.freq_penalty_scale
    if cfg.get("freq_penalty_form", "hinge") == "hinge":
        frequency = jnp.maximum(frequency - scale, 0.0)
    return c * jnp.sum(jnp.square(frequency)) / scale


def token_separable(params: dict, cfg: ml_collections.ConfigDict):
    """Per-token terms (gemmascope.sae.token_blocks), with AuxK while no latent is dead.

    Not with the frequency penalty: it is a function of the whole batch's firing frequencies.
    """
    if cfg.get("freq_penalty_scale", 0.0) > 0:
        return False
    return auxk.separable(params, cfg)


def constrain(params: dict, cfg: ml_collections.ConfigDict) -> dict:
    """Unit-norm decoder rows after each update (docs/recipe.md#decoder-constraint).

    A raw θ is clipped at 0 so that π·H(π − θ) stays non-negative and equal to the inference form
    relu(π)·H(π − θ).
    """
    params = dictionary.constrain(params, cfg)
    if cfg.threshold_param == "raw":
        params = {**params, "threshold": jnp.maximum(params["threshold"], 0.0)}
    return params


def update_buffers(params: dict, x: jax.Array, metrics: dict, step_index, cfg) -> dict:
    """The AuxK firing counters, and the target_l0 form's dual-ascent step on log λ.

    The step on log λ is taken only once the sparsity warmup is over: while the warmup holds the
    penalty down, L0 is above any target and λ would wind up.
    """
    if "tokens_since_fired" in params:
        params = auxk.update_counters(params, metrics["fired"], x.size // x.shape[-1])
    if cfg.sparsity_form != "target_l0":
        return params
    error = jnp.log(jnp.maximum(metrics["l0"], _L0_FLOOR) / metrics["target_l0"])
    steer = (jnp.asarray(step_index) >= cfg.sparsity_warmup_steps).astype(jnp.float32)
    step = steer * cfg.target_l0_rate * jnp.clip(error, -1.0, 1.0)
    log_coeff = jnp.clip(params["log_sparsity_coeff"] + step, *_LOG_COEFF_RANGE)
    return {**params, "log_sparsity_coeff": log_coeff.astype(jnp.float32)}


def to_jumprelu(params: dict, cfg: ml_collections.ConfigDict) -> dict:
    """The JumpReLU inference form (docs/recipe.md#params-npz), in training units."""
    return inference.jumprelu_form(
        params, params["W_enc"], params["b_enc"], threshold(params, cfg), cfg
    )
