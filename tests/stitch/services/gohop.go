// gohop: GET /<nonce> fetches the backend's /<nonce> through net/http's pooled
// keep-alive client, then answers with its body.  The transport writes and reads each
// backend connection on goroutines of its own (writeLoop, readLoop), not on the
// handler's: the downstream call is a hand-off between goroutines.
//
// With GOHOP_NOISE=1 it also makes the Go runtime wake goroutines for other reasons
// than that hand-off, as real services do (bench/bench_gowake.py measures against
// them): a per-call context deadline (timers), a contended mutex in the handler,
// server read/write deadlines, idle backend connections closed after 50 ms, and a
// goroutine sleeping in a loop (timer wake-ups from the scheduler).
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

func main() {
	port, backend := os.Args[1], os.Args[2]
	noise := os.Getenv("GOHOP_NOISE") == "1"
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	if noise {
		tr.IdleConnTimeout = 50 * time.Millisecond
		go func() {
			for {
				time.Sleep(200 * time.Microsecond)
			}
		}()
	}
	client := &http.Client{Transport: tr}
	var mu sync.Mutex
	hits := 0
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		ctx := context.Background() // as client.Get: no deadline, no cancellation
		if noise {
			mu.Lock()
			hits++
			time.Sleep(20 * time.Microsecond)
			mu.Unlock()
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(r.Context(), 5*time.Second)
			defer cancel()
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, backend+r.URL.Path, nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		w.Write(body)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	srv := &http.Server{}
	if noise {
		srv.ReadTimeout, srv.WriteTimeout = 5*time.Second, 5*time.Second
	}
	srv.Serve(ln)
}
