"""rtml: real-time ML on Kubernetes (API models, operator, local control plane, CLI)."""

__version__ = "0.1.0"
GROUP = "rtml.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
