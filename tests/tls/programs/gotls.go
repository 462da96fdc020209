// A Go HTTPS server and client (crypto/tls, net/http), for tests/tls/test_tls_go.py.
//
//	gotls server ADDR [CERT KEY]    serves /echo?n=N (N bytes of 'x'), 404 elsewhere,
//	                                over TLS given CERT and KEY, else in clear text;
//	                                prints "ready" once listening
//	gotls client URL PATH...        GETs each path on one keep-alive connection (TLS
//	                                verification off: a self-signed test certificate);
//	                                prints [[status, body length], ...] as JSON;
//	                                with GOTLS_H2=1 it offers HTTP/2 (ALPN h2)
package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
)

func serve(addr, cert, key string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte(strings.Repeat("x", n)))
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	srv := &http.Server{Handler: mux}
	if cert == "" {
		fmt.Fprintln(os.Stderr, srv.Serve(ln))
	} else {
		fmt.Fprintln(os.Stderr, srv.ServeTLS(ln, cert, key))
	}
	os.Exit(1)
}

func client(base string, paths []string) {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		MaxIdleConnsPerHost: 1, ForceAttemptHTTP2: os.Getenv("GOTLS_H2") == "1"}
	c := &http.Client{Transport: tr}
	out := [][2]int{}
	for _, p := range paths {
		resp, err := c.Get(base + p)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out = append(out, [2]int{resp.StatusCode, len(body)})
		if resp.ProtoMajor == 2 {
			fmt.Fprintln(os.Stderr, "h2")
		}
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}

func main() {
	switch os.Args[1] {
	case "server":
		if len(os.Args) > 4 {
			serve(os.Args[2], os.Args[3], os.Args[4])
		} else {
			serve(os.Args[2], "", "")
		}
	case "client":
		client(os.Args[2], os.Args[3:])
	}
}
