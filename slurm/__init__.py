"""SLURM launchers: cluster profiles, sbatch rendering and submission, allocation checks.

``visage submit`` (slurm.cli) renders slurm/templates/train.sbatch with a profile from
configs/cluster/ and submits it; ``slurm.allocation`` runs inside every rank before training.
"""
