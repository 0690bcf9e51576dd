"""Self-supervised methods as small classes over one engine (see base.Method)."""
