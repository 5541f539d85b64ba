"""The desired state: models, loading with located errors, checks and the JSON Schema."""

from mailops.spec.loader import ACCOUNTS_FILE, DEFAULTS_FILE, LoadedSpec, load_spec

__all__ = ["ACCOUNTS_FILE", "DEFAULTS_FILE", "LoadedSpec", "load_spec"]
