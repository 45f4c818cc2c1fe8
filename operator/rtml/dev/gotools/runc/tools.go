//go:build tools

// Package tools pins runc (built with cgo and libseccomp) for rtml's local node.
package tools

import _ "github.com/opencontainers/runc"
