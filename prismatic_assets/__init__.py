"""Prismatic: gradient-based diversity (G-Vendi) and Prismatic Synthesis as a Dagster project.

The algorithms live in `prismatic_assets.core` (no Dagster imports); the Dagster wiring
(assets, resources, checks, schedules) lives beside it.
"""

__version__ = "0.1.0"
