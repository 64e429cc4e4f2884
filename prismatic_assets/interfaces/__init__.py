"""What users call: the `prismatic` command line (`cli`, `cli_toolkit`) and the Python API (`api`)."""
