"""Pure algorithms of Prismatic: data, gradients, projections, clustering, G-Vendi, synthesis.

Nothing in this package imports Dagster; each module is usable and tested on its own.
"""
