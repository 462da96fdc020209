// gohop: GET /<nonce> fetches the backend's /<nonce> through net/http's pooled
// keep-alive client, then answers with its body.  The transport writes and reads each
// backend connection on goroutines of its own (writeLoop, readLoop), not on the
// handler's: the downstream call is a hand-off between goroutines.
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

func main() {
	port, backend := os.Args[1], os.Args[2]
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		resp, err := client.Get(backend + r.URL.Path)
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
	http.Serve(ln, nil)
}
