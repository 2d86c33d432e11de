"""Configs of published tables, one subpackage per table (`python -m sequax.launch.reproduce`)."""
