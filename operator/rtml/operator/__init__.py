"""The control plane: Kopf handlers (thin), reconcilers and pure renderers."""
