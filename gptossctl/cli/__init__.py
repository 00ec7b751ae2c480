"""Thin Typer apps, one module per command group. Heavy libraries load inside commands only."""
