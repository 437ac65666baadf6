"""Gemma Scope 2 folders of a workdir: written by ``export_run``, read by ``import_released``.

``export_run`` writes every JumpReLU-form SAE and transcoder it exports a second time in Gemma
Scope 2's release format (``gemmascope.export.gs2_format``) under ``workdir/gemma_scope_2/``,
a tree laid out as a Gemma Scope 2 Hugging Face repo; ``import_released`` places a Gemma Scope 2
folder in the workdir's SAE layout, so it evaluates as one more row.

Synopsis::

    tags = release_tags(job, "jumprelu", members, several_seeds=False)   # ["l0_big", ...]
    write_member(workdir, raw_params, member_config, tags[0])
    folder = import_release(gs2_folder, workdir, "mlp_in/3", model_cfg=cfg, d_in=None, tag=None,
                            model=None, tokens_trained=None)
"""

from __future__ import annotations

import os

from gemmascope import files
from gemmascope.export import gs2_format, layout, saelens_format
from gemmascope.export.npz_format import check_params, save_npz


def release_tags(job: dict, arch_name: str, members: list[dict], several_seeds: bool):
    """Each member's Gemma Scope 2 folder tag, or None when the job has no such folder.

    A target-L0 sweep whose members fall in distinct Gemma Scope 2 L0 ranges gets the labels
    (``l0_small``, ``l0_medium``, ``l0_big``); any other sweep its own tags (``l0_32``,
    ``lambda_6e-04``). Architectures other than JumpReLU are named in the tag
    (``gated_lambda_3e-02``): Gemma Scope 2's names assume JumpReLU. Sites without a Gemma
    Scope 2 folder kind (mlp_in SAEs, transcoders of other pairs) get None.
    """
    try:
        gs2_format.folder_name(job["site"], 1, "x", target_site=job.get("target_site") or None)
    except ValueError:
        return None
    field = job["sweep_field"]
    labels = [
        gs2_format.l0_label(m["sweep_value"]) if field == "target_l0" else None for m in members
    ]
    keys = [(label, m["seed"]) for label, m in zip(labels, members, strict=True)]
    use_labels = None not in labels and len(set(keys)) == len(keys)
    tags = []
    for label, member in zip(labels, members, strict=True):
        tag = f"l0_{label}" if use_labels else layout.sweep_tag(field, member["sweep_value"])
        if arch_name != "jumprelu":
            tag = f"{arch_name}_{tag}"
        if several_seeds:
            tag += f"_seed{member['seed']}"
        tags.append(tag)
    return tags


def write_member(workdir: str, raw: dict, config: dict, tag: str) -> str:
    """Writes the member's Gemma Scope 2 folder under ``workdir/gemma_scope_2/``.

    Refuses to overwrite a folder written for another job or member (two jobs whose names
    would coincide there).
    """
    target = config.get("target_site") or None
    relative = gs2_format.folder_name(
        config["site"], config["width"], tag, target_site=target, affine="W_skip" in raw
    )
    folder = files.join(workdir, gs2_format.RELEASE_DIR, relative)
    origin = {"job": config["job"], "member": config["member"]}
    path = files.join(folder, gs2_format.CONFIG_FILE)
    if files.exists(path):
        existing = files.read_json(path).get("gemmascope") or {}
        if {k: existing.get(k) for k in origin} != origin:
            raise ValueError(
                f"{folder} already holds job {existing.get('job')!r} member "
                f"{existing.get('member')}; job {config['job']!r} member {config['member']} "
                "would overwrite it"
            )
    extra = {
        "gemmascope": {
            **origin,
            "site": config["site"],
            "architecture": config["architecture"],
            "sweep_field": config["sweep_field"],
            "sweep_value": config["sweep_value"],
            "tokens_trained": config["tokens_trained"],
        }
    }
    return gs2_format.write_release(
        folder, raw, site=config["site"], target_site=target, model_name=config["model"],
        extra=extra,
    )  # fmt: skip


def import_release(
    path: str,
    workdir: str,
    site: str,
    *,
    model_cfg,
    d_in: int | None,
    tag: str | None,
    model: str | None,
    tokens_trained: int | None,
) -> str:
    """``import_released`` of a Gemma Scope 2 folder (SAE, transcoder or skip-transcoder).

    ``site`` is the input site and must be the one config.json's ``hf_hook_point_in`` names;
    a transcoder lands in ``saes/transcoder[_affine]/layer_L/...`` as exported ones do.
    """
    from gemmascope.model import sites as model_sites

    folder_in = gs2_format.folder_of(path)
    params, info = gs2_format.read_release(folder_in)
    if info.site != site:
        raise ValueError(
            f"{folder_in}/config.json: hf_hook_point_in is the hook of {info.site}, but the "
            f"import names site {site}; give {info.site}"
        )
    expected_in, expected_out = d_in, None
    if model_cfg is not None:
        expected_in = int(model_sites.dim(model_cfg, site))
        if info.target_site is not None:
            expected_out = int(model_sites.dim(model_cfg, info.target_site))
    if expected_in is not None and info.d_in != expected_in:
        raise ValueError(
            f"{folder_in}/{gs2_format.PARAMS_FILE}: d_in is {info.d_in} (w_enc) but the site "
            f"needs {expected_in}"
        )
    if expected_out is not None and info.d_out != expected_out:
        raise ValueError(
            f"{folder_in}/{gs2_format.PARAMS_FILE}: d_out is {info.d_out} (w_dec) but "
            f"{info.target_site} has width {expected_out}"
        )
    d_out = info.d_out if info.target_site is not None else None
    check_params(params, d_in=info.d_in, width=info.width, source=folder_in, d_out=d_out)
    kind, layer = layout.split_site(site)
    if info.target_site is not None:
        kind = "transcoder_affine" if info.affine else "transcoder"
    tag = tag or info.tag
    folder = layout.sae_dir(workdir, f"{kind}/{layer}", info.width, "gemmascope2", tag)
    save_npz(files.join(folder, layout.PARAMS_FILE), params, d_out=d_out)
    config = {
        "format": layout.CONFIG_FORMAT,
        "source": "released",
        "origin": path if files.is_url(path) else os.path.abspath(os.fspath(path)),
        "model": model or info.model_name,
        "site": site,
        "kind": kind,
        "layer": layer,
        "d_in": info.d_in,
        "width": info.width,
        "architecture": "gemmascope2",
        "sweep_field": None,
        "sweep_value": None,
        "tag": tag,
        "tokens_trained": tokens_trained,
        "norm_scale": None,
        "encoder": {"type": "jumprelu"},
    }
    if d_out is not None:
        config.update(target_site=info.target_site, d_out=d_out, target_norm_scale=None)
    layout.write_json_atomic(files.join(folder, layout.CONFIG_FILE), config)
    if d_out is None:
        saelens_format.write_saelens(folder, params, config)
    return folder
