"""The service on the air-gapped host. Rendering is pure (render.py): unit, environment file and vLLM
config from a profile and an install's inputs; it is golden-tested and graded with systemd-analyze."""
