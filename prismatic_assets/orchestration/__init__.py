"""The Dagster layer: the code location (`definitions`), resources, asset checks, retry policy, run
launcher, and the thin assets in `assets/` that call the pipeline layer."""
