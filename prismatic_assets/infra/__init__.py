"""Shared infrastructure: the one typed configuration (`config`) and the LLM engines opened per stage (`engines`)."""
