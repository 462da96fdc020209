// One HTTPS GET with Go's crypto/tls, then exit: a short-lived client for
// tests/tls/test_tls_exec.py (the agent must attach before it runs far: its exec hook).
//
//	goclient URL    prints {"status": S, "len": body length, "ms": the process's own
//	                wall time from main to exit} as JSON
//
// TLS verification is off: a self-signed test certificate.
package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	t0 := time.Now()
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	resp, err := (&http.Client{Transport: tr}).Get(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	out, _ := json.Marshal(map[string]any{"status": resp.StatusCode, "len": len(body),
		"ms": float64(time.Since(t0).Microseconds()) / 1000})
	fmt.Println(string(out))
}
