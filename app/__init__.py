"""logrelay: a self-hosted, durable home for Auth0 tenant logs."""

__version__ = "0.1.0"
