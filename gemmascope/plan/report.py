"""The text `--mode=plan` prints: a StudyPlan as a table of jobs, cache and LM memory.

Synopsis:
    from gemmascope import plan
    print(plan.format_plan(plan.make_plan(config, model_cfg)))
    plan.human_bytes(3 * 2**40)      # "3.0 TiB"
    plan.human_seconds(5400)         # "90.0 min"
"""

from __future__ import annotations

from gemmascope.plan import lm_memory
from gemmascope.plan.estimate import StudyPlan


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


def format_plan(study_plan: StudyPlan, max_rows: int = 40) -> str:
    """Renders a plan as the text `--mode=plan` prints."""
    p = study_plan
    lines = [
        f"Plan for study {p.study!r}: {len(p.jobs)} jobs, {p.n_saes} SAEs, on {p.n_chips} x "
        f"{p.accelerator.description} at {p.mfu:.1%} MFU "
        f"(peak {p.accelerator.peak_flops / 1e12:.0f} TFLOP/s per chip).",
        "",
        f"{'job':<34} {'S':>3} {'tokens':>8} {'steps':>10} {'mesh':>7} {'FLOPs':>9} "
        f"{'step':>9} {'wall':>10} {'mem/chip':>10}",
    ]
    for job in p.jobs[:max_rows]:
        lines.append(
            f"{job.name:<34} {job.n_saes:>3} {job.total_tokens:>8.3g} {job.steps:>10,} "
            f"{job.mesh[0]:>3}x{job.mesh[1]:<3} {job.flops:>9.2e} "
            f"{human_seconds(job.step_seconds):>9} {human_seconds(job.wall_seconds):>10} "
            f"{human_bytes(job.memory_bytes_per_chip):>10}"
        )
        if job.memory_bytes_per_chip > p.accelerator.memory_bytes:
            lines.append(
                f"  ! needs more than the {human_bytes(p.accelerator.memory_bytes)} of one chip: "
                "shard latents (config.mesh) or use fewer sweep values per job"
            )
    if len(p.jobs) > max_rows:
        lines.append(f"... and {len(p.jobs) - max_rows} more jobs")
    lines += ["", f"Activation cache ({p.storage_dtype}):"]
    for site, n_bytes in sorted(p.storage_bytes.items())[:max_rows]:
        lines.append(f"  {site:<16} {p.cache_tokens[site]:>10.3g} tokens  {human_bytes(n_bytes)}")
    if len(p.storage_bytes) > max_rows:
        lines.append(f"  ... and {len(p.storage_bytes) - max_rows} more sites")
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
    return "\n".join(lines + format_lm(p.lm, p.lm_params))


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
