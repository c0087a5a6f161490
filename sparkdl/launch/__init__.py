"""Launchers run one function on N workers at once, each with a connected transport (masters decide what runs)."""
