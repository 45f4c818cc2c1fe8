//go:build tools

// Package tools pins prometheus-adapter, which serves the custom metrics API
// (custom.metrics.k8s.io) from Prometheus for the HPA's concurrency, rps and p99Latency metrics,
// built from its module for rtml's local cluster.
package tools

import (
	_ "sigs.k8s.io/prometheus-adapter/cmd/adapter"
)
