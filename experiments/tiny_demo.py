r"""The embedded demo (`make demo`): Gemma Scope's whole pipeline on the shipped tiny Gemma 2.

    python -m gemmascope --config=experiments/tiny_demo.py --workdir=workdir/demo --mode=all

Caches every layer x {resid_post, mlp_out, attn_z} of the tiny model (4 layers, d_model 128) on
the training part of Tiny Shakespeare, trains JumpReLU, Gated and TopK SAEs at widths 128 and 256
with 3 sparsity settings each (one stacked job per site x width x architecture: 72 jobs, 216 SAEs),
exports them as Gemma Scope params.npz (and SAELens folders), evaluates every SAE on the last 10% of
Tiny Shakespeare, the text the tiny model was not trained on (data.eval_split="tail"), and
inspects every latent on the same text (workdir/inspect/, docs/inspect.md). Ends by printing
where the metric table, plots and inspect site are and the table's best rows.
Run time: docs/quickstart.md, "Demo timing".

The recipe is `sae.recipes.short_run` (docs/sae.md#short-run-recipe): Gemma Scope's loss with what
a run of a few hundred steps needs (a raw threshold, a 40x larger learning rate and warmups scaled
to the run, the encoder initialised at 0.1·W_decᵀ for JumpReLU and Gated, AuxK on dead JumpReLU
latents), and JumpReLU's target-L0 form (the user says which L0 they want; λ is steered to it).

Arguments: runlocal (a two-site, few-step version for tests and CI); transcoders (`make
demo-transcoders`: adds Gemma Scope 2's transcoders at every layer, mlp_in/L -> mlp_out/L plain
and with an affine skip connection, JumpReLU and TopK at both widths, 32 more jobs; the mlp_in
sites are cached too. A separate command because it adds about two thirds of the demo's
time, docs/transcoders.md); epochs=N (every SAE trains N passes over its site's ~150k cached
tokens, N times the steps, with the recipe's warmups scaled to them: how the architectures
compare once the runs are longer, docs/quickstart.md#demo-science); freq_penalty=ω (JumpReLU's
frequency penalty against dense latents at frequency scale ω, e.g. 0.05; default 0, off:
docs/sae.md#frequency-penalty, where the demo's measurement with and without it is);
freq_form=hinge|quadratic (the penalty's form, `freq_penalty_form`; quadratic is GDM's, ω ~0.1);
seed=N (every job's init and data-order seed, default 0: a second seed shows how much a
comparison moves by chance);
finetune_from=WORKDIR (the demo's "IT" variant: every job starts from the same job's final params
in a finished demo workdir and trains for a tenth of its budget on the same corpus wrapped as
chat turns, data.chat_wrap: the mechanics of Gemma Scope 2's PT-to-IT fine-tuning,
docs/training.md#init-from. The tiny model has no chat format and no IT version: the wrapped
text is only a shift of the data it reads).
"""

from gemmascope import assets, sae, study
from gemmascope.study import jobs


def get_config(arg=None):
    """The study config; `arg` is the text after the colon (arguments: module docstring)."""
    arg = study.parse_arg(
        arg,
        runlocal=False,
        transcoders=False,
        epochs=1,
        freq_penalty=0.0,
        freq_form="hinge",
        seed=0,
        finetune_from="",
    )
    if arg.epochs < 1:
        raise ValueError(f"tiny_demo: epochs must be >= 1, got {arg.epochs}")
    config = study.base_config()
    config.name = "tiny_demo"
    # The tiny Gemma 2 shipped in gemmascope/assets (docs/embedded_model.md).
    config.model.path = "embedded"
    # The bundled Tiny Shakespeare; sequences of 128 tokens (the tiny model's training length).
    config.data.corpus = "embedded"
    config.data.seq_len = 128
    # Cap on packed training sequences: about 150k tokens per site.
    config.data.max_sequences = 1200
    # Held-out sequences (never cached or trained on) for the evaluation.
    config.data.n_eval_sequences = 64
    # The eval split is the tail of the corpus that the tiny LM held out (assets.corpus:
    # split_corpus, the last 10% of the characters), so delta LM loss is measured on text the
    # LM never trained on; the SAEs train on documents before the cut.
    config.data.eval_split = "tail"
    config.data.eval_fraction = assets.corpus.HELDOUT_FRACTION

    # Every layer x Gemma Scope's three site kinds (not mlp_in, the transcoders' input).
    config.sites = ("attn_z/*", "mlp_out/*", "resid_post/*")
    # Two widths (1x and 2x d_model = 128) for every site; 150k tokens (about one epoch) per SAE.
    tokens = 150_000 * arg.epochs
    config.jobs.groups.all_sites = dict(sites=("*/*",), widths=(128, 256), total_tokens=tokens)

    # Activations per step: about 290 steps per job (per epoch).
    config.train.batch_size = 512
    steps = tokens // config.train.batch_size
    config.jobs.archs.jumprelu = dict(
        # Target L0s: sparsity rises left to right.
        sweep_values=(32.0, 16.0, 8.0),
        sae=dict(
            # The frequency penalty's scale ω (0 = off; docs/sae.md#frequency-penalty).
            freq_penalty_scale=arg.freq_penalty,
            freq_penalty_form=arg.freq_form,
            **sae.recipes.short_run("jumprelu", steps, sparsity_form="target_l0"),
        ),
    )
    config.jobs.archs.gated = dict(
        # L1 coefficients of the gate: sparsity rises left to right.
        sweep_values=(0.03, 0.1, 0.3),
        sae=sae.recipes.short_run("gated", steps),
    )
    config.jobs.archs.topk = dict(
        # k: latents kept per token.
        sweep_values=(32, 16, 8),
        sae=sae.recipes.short_run("topk", steps),
    )

    # Init and data-order seed of every job (another seed: how much a comparison moves by chance).
    config.train.seeds = [arg.seed]
    config.train.log_every_tokens = 50 * 512
    config.train.ckpt_every_tokens = 200 * 512
    config.train.dead_window_tokens = 100_000
    # Held-out FVU, L0 and dead fraction of every SAE every 100 steps (on one held-out batch).
    config.train.heldout_every_tokens = 100 * 512
    config.train.progress_bar = False

    # Evaluation on the 64 held-out sequences, in one batch (the clean pass is shared).
    config.eval.n_sequences = 64
    config.eval.batch_size = 64

    # Every latent's top contexts, quantile samples, histogram, logit effects and neighbours on
    # the same 64 held-out sequences (docs/inspect.md); the site is workdir/demo/inspect/.
    config.inspect.n_sequences = 64
    config.inspect.batch_size = 32
    # Smaller pages than the defaults (216 SAEs): 12 top contexts, 2 per quantile band, 10 + 3
    # tokens around each.
    config.inspect.top_k = 12
    config.inspect.examples_per_quantile = 2
    config.inspect.context_before = 10
    config.inspect.context_after = 3

    # Plan figures for this machine's kind of run are not meaningful: plan for one H100.
    config.plan.accelerator = "h100"
    config.plan.n_chips = 1
    config.plan.mfu = 0.3

    if arg.transcoders:
        add_transcoders(config)
    if arg.runlocal:
        config.name = "tiny_demo_runlocal"
        config.data.max_sequences = 80
        config.data.n_eval_sequences = 8
        config.sites = ("resid_post/0", "attn_z/1")
        config.jobs.groups.all_sites.sites = config.sites
        config.jobs.groups.all_sites.widths = (64,)
        config.jobs.groups.all_sites.total_tokens = 4096
        config.train.batch_size = 256
        config.train.log_every_tokens = 1024
        config.train.ckpt_every_tokens = 1024
        config.eval.n_sequences = 8
        config.eval.batch_size = 8
        config.inspect.n_sequences = 8
        config.inspect.batch_size = 8
    if arg.finetune_from:
        config.name = config.name + "_it"
        # Gemma's chat template around every document (the tokenizer spells it in bytes).
        config.data.chat_wrap = True
        config.jobs.init_from = arg.finetune_from
        config.jobs.init_token_fraction = 0.1
    return config


def add_transcoders(config):
    """Gemma Scope 2's transcoders at every layer of the tiny model (docs/transcoders.md).

    mlp_in/L -> mlp_out/L, plain and with an affine skip connection, at the SAEs' widths, with
    the architectures that train transcoders (JumpReLU, TopK; Gated does not). The SAE group
    keeps its three site kinds: mlp_in is cached for the transcoders only.
    """
    config.name = "tiny_demo_transcoders"
    config.sites = (*config.sites, "mlp_in/*")
    config.jobs.groups.all_sites.sites = ("attn_z/*", "mlp_out/*", "resid_post/*")
    config.jobs.groups.transcoders = dict(
        sites=("mlp_in/*",),
        widths=tuple(config.jobs.groups.all_sites.widths),
        total_tokens=config.jobs.groups.all_sites.total_tokens,
        transcoders=("plain", "affine"),
        archs=("jumprelu", "topk"),
    )


def sweep(add, arg=None):
    """Launcher tasks (launch/): one per site kind x architecture, each running its jobs in turn.

    `python -m gemmascope --mode=all` does not need this; `python -m launch.local
    --config=experiments/tiny_demo.py --workdir=workdir/demo --parallel=2` runs these tasks two at
    a time.
    """
    config = get_config(arg)
    all_jobs = jobs.expand(config, study.model_config(config.model))
    # Job names start with the site kind (transcoder jobs with transcoder[_affine]).
    for kind, arch in sorted({(job.name.split("-")[0], job.arch) for job in all_jobs}):
        add(jobs=f"{kind}-*-{arch}")
