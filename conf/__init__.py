"""Hydra configs, installed as the package nbeval.conf (found as pkg://nbeval.conf)."""
