"""Named training recipes: Gemma Scope's as published, and the one we recommend for short runs.

A recipe is a dict of overrides of an architecture's ``default_config()``. Two are defined:

- ``gemma_scope``: the published recipe (docs/recipe.md#jumprelu): log θ from 1e-3, ε = 1e-3,
  λ·L0 warmed up over 10k steps, lr 7e-5 with a 1k-step cosine warmup from 0.1x, Adam(0, 0.999),
  unit-norm decoder, W_enc = W_decᵀ. Written out in full so it cannot drift with the defaults.
- ``short_run``: what a run of a few thousand steps needs (docs/sae.md#short-run-recipe, measured
  by benchmarks/recovery.py): raw θ with ε = 0.01 (log θ barely moves in a short run), lr 3e-3
  with warmups scaled to the run, the encoder initialised at 0.1·W_decᵀ for the architectures in
  which every latent fires at step 0 (JumpReLU, Gated, ReLU: the unit-norm tied init then
  reconstructs about M/2d times the input, and the overshoot drives every threshold up before
  any direction is learned, docs/sae.md#initialisation; the TopK family keeps unit encoder
  columns, which only k latents per token see), for JumpReLU and the TopK family a free decoder
  from rows of norm 0.1 (SAELens's init), and for JumpReLU AuxK on dead latents (α = 1/32, as
  the TopK family uses it) and, in the coefficient and target-L0 forms, the global gradient norm
  clipped at 1 (SAELens's trainer); Gemma Scope 2's quadratic L0 form trains unclipped, which
  recovers more (docs/sae.md#gradient-clip). The JumpReLU family takes its ``sparsity_form``
  through the recipe for that reason.

Synopsis::

    cfg = sae.ARCHITECTURES["jumprelu"].default_config()
    cfg.update(recipes.get("short_run", "jumprelu", total_steps=3000))
    cfg.update(recipes.get("short_run", "jumprelu", total_steps=3000, sparsity_form="quadratic"))
"""

from __future__ import annotations

from collections.abc import Callable

from gemmascope.sae.jumprelu import SPARSITY_FORMS

# The published Gemma Scope JumpReLU optimisation (docs/recipe.md#optimiser).
_GEMMA_SCOPE_JUMPRELU = dict(
    sparsity_form="coeff",
    threshold_param="log",
    threshold_init=1e-3,
    bandwidth=1e-3,
    lr=7e-5,
    lr_warmup_steps=1_000,
    lr_warmup_start=0.1,
    sparsity_warmup_steps=10_000,
    adam_b1=0.0,
    adam_b2=0.999,
    adam_eps=1e-8,
    unit_norm_decoder=True,
    encoder_init_scale=1.0,
    auxk_alpha=0.0,
)
_K_FAMILY = ("topk", "batchtopk", "matryoshka")
# Architectures with JumpReLU's encoder, threshold and sparsity fields (its recipe knobs).
_JUMPRELU_FAMILY = ("jumprelu", "matryoshka_jumprelu")


def _check_sparsity_form(arch: str, sparsity_form: str | None) -> None:
    if sparsity_form is None:
        return
    if arch not in _JUMPRELU_FAMILY:
        raise ValueError(
            f"sparsity_form={sparsity_form!r} is a field of the JumpReLU family "
            f"{_JUMPRELU_FAMILY}, not of {arch!r}: leave it unset for {arch!r}."
        )
    if sparsity_form not in SPARSITY_FORMS:
        raise ValueError(f"unknown sparsity_form {sparsity_form!r}; valid: {SPARSITY_FORMS}")


def gemma_scope(
    arch: str, total_steps: int | None = None, sparsity_form: str | None = None
) -> dict:
    """The published Gemma Scope recipe for JumpReLU; the package defaults for the others.

    Published with the λ·L0 form ("coeff"); another ``sparsity_form`` replaces it and changes
    nothing else (the published optimisation has no clip to adapt; the Gemma Scope 2 studies
    use it with "target_l0").

    Raises:
        ValueError: an unknown sparsity_form, or one given for an architecture outside the
            JumpReLU family.
    """
    del total_steps  # the published schedules are in steps, whatever the budget
    _check_sparsity_form(arch, sparsity_form)
    if arch not in _JUMPRELU_FAMILY:
        return {}
    return {**_GEMMA_SCOPE_JUMPRELU, **({"sparsity_form": sparsity_form} if sparsity_form else {})}


def short_run(arch: str, total_steps: int, sparsity_form: str | None = None) -> dict:
    """The recommended recipe for a run of ``total_steps`` steps (a few hundred to ~10k).

    Warmups scale with the run: the lr warms up over 1/60 of it, the sparsity coefficient over
    1/15 (50 and 200 steps of a 3,000-step run). For the JumpReLU family, ``sparsity_form`` (one
    of SPARSITY_FORMS; None = the architecture's default, "coeff") is part of the recipe: the
    gradient clip depends on it.

    Raises:
        ValueError: total_steps < 1, or a sparsity_form that is unknown or given for an
            architecture outside the JumpReLU family.
    """
    if total_steps < 1:
        raise ValueError(f"short_run needs total_steps >= 1, got {total_steps}")
    _check_sparsity_form(arch, sparsity_form)
    overrides = dict(lr=3e-3, lr_warmup_steps=max(1, round(total_steps / 60)))
    if arch not in _K_FAMILY:
        # Every latent fires at step 0 in these (not only k): start from an undershoot.
        overrides["encoder_init_scale"] = 0.1
        overrides["sparsity_warmup_steps"] = max(1, round(total_steps / 15))
    if arch in _JUMPRELU_FAMILY:
        overrides.update(threshold_param="raw", bandwidth=0.01, auxk_alpha=1.0 / 32.0)
        # The global gradient norm clipped at 1, as SAELens's trainer does: at a large λ the
        # θ gradients' spikes (1/ε = 100 per token in the window) otherwise set Adam's scale,
        # and on the 4x_l16 problem at λ 0.1 MMCS was 0.77 against SAELens's 0.81 (0.82 with
        # it; neutral for the target-L0 form, docs/sae.md#gradient-clip). Not for the quadratic
        # form: its θ gradient, λ(4/T)(L0 − T) per token, is huge while L0 is far above the
        # target, so the clip shrinks the dictionary's gradient for those steps, and on the 4x
        # Zipf problem MMCS fell from 0.955 to 0.834 (Matryoshka JumpReLU 0.954 to 0.771).
        form = sparsity_form or "coeff"
        overrides["max_grad_norm"] = 0.0 if form == "quadratic" else 1.0
        if sparsity_form is not None:
            overrides["sparsity_form"] = sparsity_form
    if arch in _JUMPRELU_FAMILY + _K_FAMILY:
        # A free decoder from rows of norm 0.1 (SAELens's init): on 8x problems JumpReLU
        # recovers 0.97 where unit rows reach 0.87 at the same L0; on the 4x Zipf problem TopK
        # at k 16 0.94 against 0.68, BatchTopK 0.86 against 0.56 (docs/sae.md#recipes).
        overrides.update(decoder_init_norm=0.1, unit_norm_decoder=False)
    if arch == "gated":
        # The auxiliary term trains the decoder too (SAELens's loss, not the paper's frozen
        # decoder): 0.95 against 0.59 MMCS on the 4x_l4 problem at λ 0.1 (docs/sae.md#gated-aux).
        overrides["aux_trains_decoder"] = True
    if arch in ("batchtopk", "matryoshka"):
        # The inference threshold is estimated over the last two thirds of the run, with
        # SAELens's EMA rate (0.01, a ~100-step memory), so that it tracks the end of the run: a
        # free decoder's scale still moves, and the 1000-step memory of 0.999 left L0 at 2.0-2.4
        # for k = 3 in the recovery tests (2.8-2.9 with 0.99).
        overrides["threshold_start_step"] = total_steps // 3
        overrides["threshold_decay"] = 0.99
    return overrides


RECIPES: dict[str, Callable[..., dict]] = {"gemma_scope": gemma_scope, "short_run": short_run}


def get(
    recipe: str, arch: str, total_steps: int | None = None, sparsity_form: str | None = None
) -> dict:
    """The overrides of ``recipe`` for architecture ``arch`` (and JumpReLU's ``sparsity_form``).

    Raises:
        ValueError: an unknown recipe (the message lists the valid ones), short_run without
            total_steps, or a sparsity_form the recipe or architecture does not take.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; valid recipes: {sorted(RECIPES)}")
    if recipe == "short_run" and total_steps is None:
        raise ValueError("the short_run recipe scales its warmups with total_steps: pass it")
    return RECIPES[recipe](arch, total_steps, sparsity_form=sparsity_form)
