"""Shared SAE configuration: the Gemma Scope optimiser defaults and input validation.

Every architecture's ``default_config()`` starts from :func:`base_config` (the optimiser, schedule
and decoder-constraint fields of docs/recipe.md#optimiser, with the Gemma Scope numbers as defaults)
and adds its own fields. The ``check_*`` helpers raise ``ValueError`` messages that name the
offending field, its value and what would be valid.

Synopsis::

    cfg = base_config()            # lr 7e-5, Adam(0, 0.999, 1e-8), cosine warmup from 0.1x ...
    check_in(cfg, "threshold_param", ("log", "raw"))
    check_shape(d_in, width)
"""

from collections.abc import Iterable

import ml_collections

#: Matmul precisions a training step may run at, spelled as ``jax.default_matmul_precision``
#: takes them: "highest" = "float32" (full fp32: 6 bf16 passes on TPU, no TF32 on GPU),
#: "high" = "tensorfloat32" (3 bf16 passes on TPU, TF32 on GPU), "default" = "bfloat16" (one bf16
#: pass on TPU, TF32 on GPU). On CPU every choice computes in fp32.
MATMUL_PRECISIONS = ("highest", "float32", "high", "tensorfloat32", "default", "bfloat16")


def base_config() -> ml_collections.ConfigDict:
    """Fields shared by every architecture (docs/recipe.md#optimiser values as defaults)."""
    cfg = ml_collections.ConfigDict()
    # Peak learning rate η (GS: 7e-5 for every SAE).
    cfg.lr = 7e-5
    # Steps of cosine warmup from lr_warmup_start·η to η; constant afterwards (GS: 1,000).
    cfg.lr_warmup_steps = 1_000
    # Fraction of η the warmup starts from (GS: 0.1).
    cfg.lr_warmup_start = 0.1
    # Adam moments (GS: β1 = 0, β2 = 0.999, ε = 1e-8).
    cfg.adam_b1 = 0.0
    cfg.adam_b2 = 0.999
    cfg.adam_eps = 1e-8
    # Global gradient-norm clip before Adam; 0 disables it (GS: none mentioned).
    cfg.max_grad_norm = 0.0
    # Steps of linear warmup of the sparsity coefficient from 0 (GS: 10,000).
    cfg.sparsity_warmup_steps = 10_000
    # Keep decoder rows at unit norm: project their gradients and renormalise after each update.
    cfg.unit_norm_decoder = True
    # At init W_enc = encoder_init_scale · W_decᵀ with unit W_dec rows (GS: 1; Anthropic's April
    # 2024 update and SAELens: 0.1; docs/sae.md#initialisation explains the choice).
    cfg.encoder_init_scale = 1.0
    # Norm of every W_dec row at init (GS: 1). Other values need unit_norm_decoder = False
    # (SAELens: 0.1 with a free decoder); the constraint would renormalise them to 1.
    cfg.decoder_init_norm = 1.0
    # Subtract b_dec from the input before encoding (the pre-encoder bias of
    # docs/recipe.md#jumprelu-model).
    cfg.pre_encoder_bias = True
    # Precision of every matmul of the training step (MATMUL_PRECISIONS; GS trains in fp32).
    cfg.matmul_precision = "highest"
    # Transcoders (docs/transcoders.md): None = an SAE, whose decoder reconstructs its input; an
    # int = a transcoder whose decoder writes a d_out-wide target site (it reads mlp_in/L and
    # reconstructs mlp_out/L). The trainer sets it from a paired source's target width.
    cfg.d_out = None
    # A skip-transcoder: the output gains the affine skip term x @ W_skip (d_in, d_out); needs
    # d_out. b_dec is already the output's bias, so the skip term has no bias of its own.
    cfg.skip_connection = False
    return cfg


def check_positive(cfg: ml_collections.ConfigDict, *fields: str, allow_zero: bool = False) -> None:
    """Raises ValueError unless each named numeric field is > 0 (or >= 0 with allow_zero)."""
    for field in fields:
        value = cfg[field]
        ok = value >= 0 if allow_zero else value > 0
        if not ok:
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"SAE config field {field!r} must be {bound}, got {value!r}.")


def check_in(cfg: ml_collections.ConfigDict, field: str, valid: Iterable[str]) -> None:
    """Raises ValueError unless cfg[field] is one of `valid`."""
    valid = tuple(valid)
    if cfg[field] not in valid:
        raise ValueError(f"SAE config field {field!r} must be one of {valid}, got {cfg[field]!r}.")


def check_base(cfg: ml_collections.ConfigDict) -> None:
    """Validates the shared optimiser / schedule / init fields of :func:`base_config`."""
    check_positive(cfg, "lr", "adam_eps", "encoder_init_scale", "decoder_init_norm")
    if cfg.unit_norm_decoder and cfg.decoder_init_norm != 1.0:
        raise ValueError(
            f"SAE config field 'decoder_init_norm' is {cfg.decoder_init_norm!r} but "
            "'unit_norm_decoder' is True, which renormalises every decoder row to 1 after the "
            "first update: set decoder_init_norm = 1.0, or unit_norm_decoder = False for a free "
            "decoder."
        )
    check_positive(
        cfg, "lr_warmup_steps", "sparsity_warmup_steps", "max_grad_norm", allow_zero=True
    )
    if not 0.0 <= cfg.lr_warmup_start <= 1.0:
        raise ValueError(
            f"SAE config field 'lr_warmup_start' must be in [0, 1], got {cfg.lr_warmup_start!r}."
        )
    for field in ("adam_b1", "adam_b2"):
        if not 0.0 <= cfg[field] < 1.0:
            raise ValueError(f"SAE config field {field!r} must be in [0, 1), got {cfg[field]!r}.")
    check_in(cfg, "matmul_precision", MATMUL_PRECISIONS)
    check_transcoder(cfg)


def check_transcoder(cfg: ml_collections.ConfigDict) -> None:
    """Validates the transcoder fields ``d_out`` and ``skip_connection`` of :func:`base_config`."""
    d_out = cfg.get("d_out")
    if d_out is not None and (isinstance(d_out, bool) or not isinstance(d_out, int) or d_out < 1):
        raise ValueError(
            f"SAE config field 'd_out' must be None (an SAE) or a positive integer (a transcoder's "
            f"target width), got {d_out!r}."
        )
    if cfg.get("skip_connection") and d_out is None:
        raise ValueError(
            "SAE config field 'skip_connection' is True but 'd_out' is None: the affine skip term "
            "belongs to transcoders (set d_out, or train on a paired source, which sets it)."
        )
    if d_out is not None and cfg.pre_encoder_bias:
        raise ValueError(
            "SAE config field 'pre_encoder_bias' is True but this is a transcoder (d_out = "
            f"{d_out}): its b_dec is the target's bias and cannot be subtracted from the input. "
            "Set pre_encoder_bias = False (transcoders encode raw inputs, as Gemma Scope 2's do)."
        )


def check_shape(d_in: int, width: int) -> None:
    """Raises ValueError unless d_in and width are positive integers."""
    for name, value in (("d_in", d_in), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"SAE {name} must be a positive integer, got {value!r}.")
