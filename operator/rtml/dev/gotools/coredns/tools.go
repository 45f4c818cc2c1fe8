//go:build tools

// Package tools pins CoreDNS, the cluster DNS of rtml's local node.
package tools

import _ "github.com/coredns/coredns"
