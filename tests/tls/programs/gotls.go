// A Go HTTPS server and client (crypto/tls, net/http), for tests/tls/test_tls_go.py.
//
//	gotls server ADDR [CERT KEY]    serves /echo?n=N (N bytes of 'x'), 404 elsewhere,
//	                                over TLS given CERT and KEY, else in clear text;
//	                                prints "ready" once listening
//	gotls client URL PATH...        GETs each path on one keep-alive connection (TLS
//	                                verification off: a self-signed test certificate);
//	                                prints [[status, body length], ...] as JSON;
//	                                with GOTLS_H2=1 it offers HTTP/2 (ALPN h2), with
//	                                GOTLS_TLS12=1 no TLS version above 1.2
//	gotls loop ITERS SIZE CERT KEY  bench/bench_tls.py --go: a TLS client and server
//	                                goroutine ping-pong SIZE bytes on loopback; after
//	                                "ready" and a line on stdin, ITERS round trips, then
//	                                prints the process's CPU ns per crypto/tls call
//	                                (4 a round trip) and the wall ns per round trip
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
	"syscall"
	"time"
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
	cfg := &tls.Config{InsecureSkipVerify: true}
	if os.Getenv("GOTLS_TLS12") == "1" {
		cfg.MaxVersion = tls.VersionTLS12
	}
	tr := &http.Transport{TLSClientConfig: cfg,
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

func cpuNs() int64 {
	var r syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &r)
	return r.Utime.Nano() + r.Stime.Nano()
}

func loop(iters, size int, cert, key string) {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	addr := os.Getenv("GOTLS_LOOP_ADDR") // the bench filters by port
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := tls.Listen("tcp", addr, &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, size)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buf := make([]byte, size)
	c.Write(buf) // one warm-up round trip: session tickets read, stacks grown
	io.ReadFull(c, buf)
	fmt.Println("ready")
	fmt.Scanln()
	cpu0, t0 := cpuNs(), time.Now()
	for i := 0; i < iters; i++ {
		if _, err := c.Write(buf); err != nil {
			os.Exit(1)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			os.Exit(1)
		}
	}
	wall, cpu := time.Since(t0).Nanoseconds(), cpuNs()-cpu0
	fmt.Println(float64(cpu)/float64(4*iters), float64(wall)/float64(iters))
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
	case "loop":
		iters, _ := strconv.Atoi(os.Args[2])
		size, _ := strconv.Atoi(os.Args[3])
		loop(iters, size, os.Args[4], os.Args[5])
	}
}
