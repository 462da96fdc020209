// A Go net/http service that writes and reads each request's nonce in PostgreSQL with
// lib/pq, the nonce a bound parameter ($1): lib/pq sends such a query in two round
// trips (Parse/Describe/Sync, then Bind/Execute/Sync).  No tracing code.
//
// Each handler holds one pooled connection (sql.Conn) for its request and answers
// "ok <nonce> <client port of that connection> <count>", so a test knows which
// connection served which request; the connection goes back to the pool only after
// the response is flushed.
//
//	gopq PORT DSN   (build in GOPATH mode against Debian's golang-github-lib-pq-dev)
package main

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"

	_ "github.com/lib/pq"
)

var (
	mu    sync.Mutex
	ports = map[any]string{} // driver connection -> its client port
)

// portOf the connection's client port as the server sees it, asked once per connection.
func portOf(ctx context.Context, c *sql.Conn) (string, error) {
	var key any
	if err := c.Raw(func(dc any) error { key = dc; return nil }); err != nil {
		return "", err
	}
	mu.Lock()
	p, ok := ports[key]
	mu.Unlock()
	if ok {
		return p, nil
	}
	if err := c.QueryRowContext(ctx, "SELECT inet_client_port()::text").Scan(&p); err != nil {
		return "", err
	}
	mu.Lock()
	ports[key] = p
	mu.Unlock()
	return p, nil
}

func main() {
	port, dsn := os.Args[1], os.Args[2]
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		log.Fatal(err)
	}
	db.SetMaxOpenConns(8)
	db.SetMaxIdleConns(8)
	ctx := context.Background()
	// Open the pool and learn its ports before serving, so requests do not pay for it.
	var warm []*sql.Conn
	for i := 0; i < 8; i++ {
		c, err := db.Conn(ctx)
		if err != nil {
			log.Fatal(err)
		}
		if _, err := portOf(ctx, c); err != nil {
			log.Fatal(err)
		}
		warm = append(warm, c)
	}
	for _, c := range warm {
		c.Close()
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		nonce := strings.TrimPrefix(r.URL.Path, "/")
		ctx := r.Context()
		c, err := db.Conn(ctx)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer c.Close() // after the flush below: one request at a time on a connection
		p, err := portOf(ctx, c)
		var n int
		if err == nil {
			_, err = c.ExecContext(ctx, "INSERT INTO orders (note, qty) VALUES ($1, $2)", nonce, 1)
		}
		if err == nil {
			err = c.QueryRowContext(ctx, "SELECT count(*) FROM orders WHERE note = $1", nonce).Scan(&n)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		body := fmt.Sprintf("ok %s %s %d", nonce, p, n)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write([]byte(body))
		w.(http.Flusher).Flush()
	})
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ready")
	log.Fatal(http.Serve(ln, nil))
}
