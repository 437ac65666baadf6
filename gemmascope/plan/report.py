"""The text `--mode=plan` prints: a StudyPlan as a table of jobs, cache and LM memory.

Synopsis:
    from gemmascope import plan
    print(plan.format_plan(plan.make_plan(config, model_cfg)))   # one row per group x arch
    print(plan.format_plan(study_plan, all_jobs=True))            # one row per job (--plan_jobs)
    plan.human_bytes(3 * 2**40)      # "3.0 TiB"
    plan.human_seconds(5400)         # "90.0 min"
"""

from __future__ import annotations

from gemmascope.export import layout
from gemmascope.model import sites as model_sites
from gemmascope.plan import lm_memory
from gemmascope.plan.estimate import JobPlan, StudyPlan


def human_bytes(n: float) -> str:
    """Formats bytes in binary units (KiB ... PiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    raise AssertionError("unreachable")


def human_seconds(s: float) -> str:
    """Formats a duration as ms, s, min, h or days."""
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _job_sort_key(job: JobPlan) -> tuple:
    """Site kind, then layer as a number (L2 before L10), then width and architecture."""
    kind, layer = model_sites.parse(job.site)
    return kind, layer, job.width, job.arch


def format_plan(
    study_plan: StudyPlan, all_jobs: bool = False, notes: list[str] | None = None
) -> str:
    """Renders a plan as the text `--mode=plan` prints.

    Args:
        study_plan: The plan.
        all_jobs: One row per job and per cache site (`--plan_jobs`); by default one row per
            group x architecture and per site kind. Jobs that do not fit a device are listed
            by name either way.
        notes: Lines about inputs the plan could not check (printed last).
    """
    p = study_plan
    chip = p.accelerator
    lines = [
        f"Plan for study {p.study!r}: {len(p.jobs)} jobs, {p.n_saes} SAEs, on {p.n_chips} x "
        f"{chip.description} ({p.n_devices} JAX devices of {human_bytes(chip.device_memory_bytes)}"
        f") at {p.mfu:.1%} MFU (peak {chip.peak_flops / 1e12:.0f} TFLOP/s per chip).",
        "",
    ]
    lines += _job_rows(p) if all_jobs else _group_rows(p)
    lines += _legend(all_jobs) + _misfits(p)
    lines += ["", f"Activation cache ({p.storage_dtype}):"]
    lines += _site_rows(p) if all_jobs else _kind_rows(p)
    lines += [
        f"  total            {human_bytes(p.total_storage_bytes)} over {len(p.storage_bytes)} "
        "sites",
        f"  writing it: one forward pass of the {p.lm_params / 1e9:.3g}B-parameter model over "
        f"{max(p.cache_tokens.values(), default=0):.3g} tokens, {p.cache_flops:.3g} FLOPs, "
        f"~{human_seconds(p.cache_seconds)} on {p.n_chips} chips (streaming instead repeats it "
        "for every job of a site)",
        "",
        f"Training: {p.total_flops:.3g} FLOPs; {human_seconds(p.total_wall_seconds)} on "
        f"{p.n_chips} chips if jobs run one after another "
        f"({p.total_wall_seconds * p.n_chips / 3600:,.0f} chip-hours).",
    ]
    lines += format_lm(p.lm, p.lm_params)
    if notes:
        lines += ["", "Not checked (plan mode reads no inputs; the run needs them):"]
        lines += [f"  {note}" for note in notes]
    return "\n".join(lines)


def _job_rows(p: StudyPlan) -> list[str]:
    lines = [
        f"{'job':<34} {'S':>3} {'tokens':>8} {'steps':>10} {'mesh':>7} {'FLOPs':>9} "
        f"{'step':>9} {'wall':>10} {'mem/device':>10}"
    ]
    for job in sorted(p.jobs, key=_job_sort_key):
        lines.append(
            f"{job.name:<34} {job.n_saes:>3} {job.total_tokens:>8.3g} {job.steps:>10,} "
            f"{job.mesh[0]:>3}x{job.mesh[1]:<3} {job.flops:>9.2e} "
            f"{human_seconds(job.step_seconds):>9} {human_seconds(job.wall_seconds):>10} "
            f"{human_bytes(job.memory_bytes_per_device):>10}" + ("" if p.fits(job) else "  !")
        )
    return lines


def _sites_summary(sites: set[str]) -> str:
    """'resid_post L0-41, mlp_out L3' : each kind with its layers as numeric ranges."""
    layers: dict[str, list[int]] = {}
    for site in sites:
        kind, layer = model_sites.parse(site)
        layers.setdefault(kind, []).append(layer)
    parts = []
    for kind in sorted(layers):
        ranges, numbers = [], sorted(layers[kind])
        start = prev = numbers[0]
        for n in numbers[1:] + [None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            ranges.append(f"{start}" if start == prev else f"{start}-{prev}")
            if n is not None:
                start = prev = n
        parts.append(f"{kind} L{','.join(ranges)}")
    return "; ".join(parts)


def _group_rows(p: StudyPlan) -> list[str]:
    by_group: dict[tuple[str, str], list[JobPlan]] = {}
    for job in p.jobs:
        by_group.setdefault((job.group, job.arch), []).append(job)
    lines = [
        f"{'group':<14} {'arch':<10} {'jobs':>5} {'SAEs':>6} {'widths':<19} {'tokens':>8} "
        f"{'FLOPs':>9} {'wall':>10} {'mem/device':>10}  sites"
    ]
    for (group, arch), members in sorted(by_group.items()):
        widths = ",".join(layout.width_label(w) for w in sorted({j.width for j in members}))
        tokens = sorted({j.total_tokens for j in members})
        token_text = f"{tokens[0]:.3g}" if len(tokens) == 1 else f"{tokens[0]:.2g}+"
        flops = sum(j.flops for j in members)
        wall = sum(j.wall_seconds for j in members)
        memory = max(j.memory_bytes_per_device for j in members)
        flag = "" if all(p.fits(j) for j in members) else " !"
        lines.append(
            f"{group:<14} {arch:<10} {len(members):>5} {sum(j.n_saes for j in members):>6} "
            f"{widths:<19} {token_text:>8} {flops:>9.2e} {human_seconds(wall):>10} "
            f"{human_bytes(memory):>10}{flag:<2} {_sites_summary({j.site for j in members})}"
        )
    return lines


def _legend(all_jobs: bool) -> list[str]:
    if all_jobs:
        text = (
            "One row per job. S: SAEs the job stacks (sweep values x seeds); tokens: training "
            "tokens per SAE; steps: optimizer steps (tokens / train.batch_size); mesh: the job's "
            "data x model devices; FLOPs: training FLOPs; step, wall: estimated time per step and "
            "for the job at the plan's MFU; mem/device: SAE parameters + Adam moments + one step's "
            "activations on one device; ! = does not fit one device."
        )
    else:
        text = (
            "One row per group x architecture (--plan_jobs lists every job). jobs, SAEs: jobs and "
            "the SAEs they stack (sweep values x seeds); widths; tokens: training tokens per SAE; "
            "FLOPs: training FLOPs of the jobs; wall: their estimated time one after another at "
            "the plan's MFU; mem/device: SAE parameters + Adam moments + one step's activations on "
            "one device, for the largest job; ! = some job does not fit one device; sites: the "
            "layers of each site kind."
        )
    return ["", *_wrap(text)]


def _wrap(text: str, width: int = 100) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + ([line] if line else [])


def _misfits(p: StudyPlan) -> list[str]:
    """Every job that does not fit one device, with advice that suits how it is sharded."""
    limit = human_bytes(p.accelerator.device_memory_bytes)
    sharded = [j for j in p.jobs if not p.fits(j) and j.mesh[1] == p.n_devices]
    unsharded = [j for j in p.jobs if not p.fits(j) and j.mesh[1] != p.n_devices]
    lines = []
    if unsharded:
        lines += [""] + _wrap(
            f"! {len(unsharded)} job(s) need more than the {limit} of one device: shard their "
            "latents over every device (mesh.shard_latents_from <= their width, or a larger "
            "mesh.model), use more chips (plan.n_chips), or fewer sweep values per job: "
            + ", ".join(j.name for j in sorted(unsharded, key=_job_sort_key))
        )
    if sharded:
        lines += [""] + _wrap(
            f"! {len(sharded)} job(s) need more than the {limit} of one device although their "
            f"latents are already sharded over all {p.n_devices} devices: use more chips "
            "(plan.n_chips), fewer sweep values per job (jobs.archs.<arch>.sweep_values) or a "
            "smaller train.batch_size: "
            + ", ".join(j.name for j in sorted(sharded, key=_job_sort_key))
        )
    return lines


def _site_rows(p: StudyPlan) -> list[str]:
    return [
        f"  {site:<16} {p.cache_tokens[site]:>10.3g} tokens  {human_bytes(p.storage_bytes[site])}"
        for site in sorted(p.storage_bytes, key=model_sites.sort_key)
    ]


def _kind_rows(p: StudyPlan) -> list[str]:
    lines = []
    for kind in sorted({model_sites.parse(site)[0] for site in p.storage_bytes}):
        sites = {s for s in p.storage_bytes if model_sites.parse(s)[0] == kind}
        tokens = sorted({p.cache_tokens[s] for s in sites})
        token_text = f"{tokens[0]:.3g}" if len(tokens) == 1 else f"{tokens[0]:.3g}-{tokens[-1]:.3g}"
        lines.append(
            f"  {kind:<12} {len(sites):>4} sites, {token_text} tokens each, "
            f"{human_bytes(sum(p.storage_bytes[s] for s in sites))} ({_sites_summary(sites)})"
        )
    return lines


def format_lm(lms: list[lm_memory.LmPlan], n_params: int) -> list[str]:
    """The plan's lines about the language model's memory per device."""
    if not lms:
        return []
    lines = [
        "",
        f"Language model per device ({n_params / 1e9:.3g}B parameters; one process runs it on "
        f"{lms[0].local_devices} devices of {human_bytes(lms[0].device_memory_bytes)}):",
    ]
    for lm in lms:
        lines.append(
            f"  {lm.stage:<8} {lm.field}={lm.model_parallel} "
            f"(x {max(lm.local_devices // lm.model_parallel, 1)} data): params "
            f"{human_bytes(lm.params_bytes_per_device)} + activations "
            f"~{human_bytes(lm.activation_bytes_per_device)} = {human_bytes(lm.bytes_per_device)}"
        )
        if lm.replicated:
            lines.append(
                f"    {', '.join(lm.replicated)} not divisible by {lm.model_parallel}: "
                "those parameters stay whole on every device"
            )
        if not lm.valid:
            lines.append(
                f"  ! {lm.field}={lm.model_parallel} does not divide the {lm.local_devices} "
                "devices of one process; the run will refuse it"
            )
        elif not lm.fits:
            advice = (
                f"set {lm.field} to {' or '.join(str(m) for m in lm.fitting)}"
                if lm.fitting
                else f"even {lm.local_devices} are not enough: use model.dtype bfloat16, a "
                f"smaller {lm.field.split('.')[0]}.batch_size or fewer sites per run"
            )
            lines.append(
                f"  ! exceeds the {human_bytes(lm.device_memory_bytes)} of one device: {advice} "
                "(docs/scaling.md)"
            )
    return lines
