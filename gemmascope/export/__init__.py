"""Gemma Scope ``params.npz`` export and import.

Synopsis::

    from gemmascope import export
    export.save_npz(path, jumprelu_params)          # raw Gemma Scope format, atomic
    params = export.load_npz(path, model_cfg=cfg, site="resid_post/12")
    raw = export.fold(jr_params, norm_scale)        # folds C and b_dec: docs/recipe.md#folding
    export.export_run(workdir, job_name)            # runs/<job> -> saes/<kind>/layer_<L>/...
    export.import_released(npz_path, workdir, site, model_cfg=cfg)
    export.released_tag(".../average_l0_71/params.npz")         # "average_l0_71"
    export.write_saelens(folder, params, config)    # <folder>/saelens/: SAELens's format

Both writers put each SAE in SAELens's format beside params.npz as well (docs/saelens.md).
"""

# The released format.
from gemmascope.export.folding import fold
from gemmascope.export.layout import list_saes, sae_dir, sweep_tag, width_label
from gemmascope.export.npz_format import NPZ_KEYS, check_params, load_npz, save_npz

# Workdir export and import.
from gemmascope.export.release import export_run, import_released, released_tag
from gemmascope.export.saelens_format import SAELENS_VERSION, saelens_config, write_saelens

__all__ = [
    "NPZ_KEYS",
    "SAELENS_VERSION",
    "check_params",
    "export_run",
    "fold",
    "import_released",
    "released_tag",
    "list_saes",
    "load_npz",
    "sae_dir",
    "saelens_config",
    "save_npz",
    "sweep_tag",
    "width_label",
    "write_saelens",
]
