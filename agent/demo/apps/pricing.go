// pricing: the demo's second Go service (standard library only, no tracing code).
//
// GET /price/<nonce> answers a price derived from the nonce as JSON; GET /healthz
// answers "ok".  The Go inventory calls it through one pooled, keep-alive http.Client,
// so the demo has a Go-to-Go HTTP call written by the transport's own goroutines.
package main

import (
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"log"
	"net/http"
	"strings"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8081", "address:port to serve on")
	flag.Parse()
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	http.HandleFunc("/price/", func(w http.ResponseWriter, r *http.Request) {
		nonce := strings.TrimPrefix(r.URL.Path, "/price/")
		h := fnv.New32a()
		h.Write([]byte(nonce))
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"nonce\": %q, \"price\": %d}\n", nonce, 100+h.Sum32()%900)
	})
	log.Printf("pricing (go) listening on %s", *listen)
	srv := &http.Server{Addr: *listen, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
