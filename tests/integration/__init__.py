"""Integration tests that need real services (Slurm)."""
