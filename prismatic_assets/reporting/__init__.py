"""Rendering for people: PNG plots (`plots`) and the self-contained comparison report (`compare_report`)."""
