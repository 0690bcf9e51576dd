"""The GPU validation: validate.py (the command line) and its tools; docs/gpu_validation.md."""
