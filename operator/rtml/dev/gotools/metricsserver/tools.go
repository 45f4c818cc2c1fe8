//go:build tools

// Package tools pins metrics-server, which serves the resource metrics API (metrics.k8s.io) the
// HPA's cpu metric reads, built from its module for rtml's local cluster.
package tools

import (
	_ "sigs.k8s.io/metrics-server/cmd/metrics-server"
)
