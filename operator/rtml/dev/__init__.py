"""The local control plane: etcd, kube-apiserver and kube-controller-manager built from pinned Go
modules and started on loopback ports, for development and integration tests."""
