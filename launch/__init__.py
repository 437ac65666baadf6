"""Launchers: run a study's sweep tasks as local processes, Slurm arrays or on Cloud TPU VMs.

Run from the repository root: `python -m launch.local`, `python -m launch.slurm`,
`python -m launch.tpu_vm` (docs/scaling.md).
"""
