//go:build tools

// Package tools pins the Kubernetes node binaries (kubelet, kube-scheduler, kube-proxy) rtml's
// local node runs; the same k8s.io/kubernetes version and replaces as ../k8s.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
