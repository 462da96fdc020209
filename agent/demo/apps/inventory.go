// inventory: the demo's Go service (standard library only, no tracing code).
//
// GET /stock/<nonce> resolves the redis name with the pure-Go resolver, opens a new
// TCP connection to redis, sends GET stock:<nonce> then SET stock:<nonce> <n+1> in
// RESP; with -postgres it then counts the nonce's orders in PostgreSQL through lib/pq
// (a bound parameter: lib/pq sends the query in two round trips, Parse/Describe/Sync
// then Bind/Execute/Sync), and with -pricing it asks the pricing service through one
// pooled keep-alive http.Client; it answers JSON.  GET /healthz answers "ok".
// lib/pq comes from Debian (golang-github-lib-pq-dev), built in GOPATH mode.
package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/lib/pq"
)

var resolver = &net.Resolver{PreferGo: true}

func redisCmd(rw *bufio.ReadWriter, args ...string) (string, error) {
	fmt.Fprintf(rw, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(rw, "$%d\r\n%s\r\n", len(a), a)
	}
	if err := rw.Flush(); err != nil {
		return "", err
	}
	line, err := rw.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", errors.New(line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", err
		}
		if n < 0 {
			return "", nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(rw, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address:port to serve on")
	redisName := flag.String("redis", "redis.demo.zt", "redis host name")
	redisPort := flag.String("redis-port", "6379", "redis port")
	pgAddr := flag.String("postgres", "", "postgres host:port (none: no SQL call)")
	pricingURL := flag.String("pricing", "", "pricing base URL (none: no pricing call)")
	flag.Parse()

	var db *sql.DB
	if *pgAddr != "" {
		host, port, err := net.SplitHostPort(*pgAddr)
		if err != nil {
			log.Fatal(err)
		}
		db, err = sql.Open("postgres", fmt.Sprintf("host=%s port=%s user=postgres "+
			"dbname=postgres sslmode=disable connect_timeout=5", host, port))
		if err != nil {
			log.Fatal(err)
		}
		db.SetMaxOpenConns(8)
		db.SetMaxIdleConns(8)
	}
	// One client for every request: its transport keeps connections to pricing alive
	// and writes each call from the connection's own goroutines.
	client := &http.Client{Timeout: 5 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 8, IdleConnTimeout: 90 * time.Second}}

	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	http.HandleFunc("/stock/", func(w http.ResponseWriter, r *http.Request) {
		nonce := strings.TrimPrefix(r.URL.Path, "/stock/")
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		ips, err := resolver.LookupIP(ctx, "ip4", *redisName)
		if err != nil || len(ips) == 0 {
			http.Error(w, fmt.Sprintf("resolve %s: %v", *redisName, err), http.StatusBadGateway)
			return
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ips[0].String(), *redisPort))
		if err != nil {
			http.Error(w, "redis: "+err.Error(), http.StatusBadGateway)
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		rw := bufio.NewReadWriter(bufio.NewReader(conn), bufio.NewWriter(conn))
		key := "stock:" + nonce
		v, err := redisCmd(rw, "GET", key)
		if err != nil {
			http.Error(w, "redis GET: "+err.Error(), http.StatusBadGateway)
			return
		}
		n := 0
		if v != "" {
			n, _ = strconv.Atoi(v)
		}
		n++
		if _, err := redisCmd(rw, "SET", key, strconv.Itoa(n)); err != nil {
			http.Error(w, "redis SET: "+err.Error(), http.StatusBadGateway)
			return
		}
		orders := 0
		if db != nil {
			// The nonce is a literal (so the span names its request), the quantity a
			// bound parameter: what makes lib/pq take two round trips.
			q := "SELECT count(*) FROM orders WHERE note = " + pq.QuoteLiteral(nonce) +
				" AND qty > $1"
			if err := db.QueryRowContext(ctx, q, 0).Scan(&orders); err != nil {
				http.Error(w, "postgres: "+err.Error(), http.StatusBadGateway)
				return
			}
		}
		price := 0
		if *pricingURL != "" {
			req, err := http.NewRequestWithContext(ctx, "GET", *pricingURL+"/price/"+nonce, nil)
			if err == nil {
				var resp *http.Response
				if resp, err = client.Do(req); err == nil {
					var p struct{ Price int }
					err = json.NewDecoder(resp.Body).Decode(&p)
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("answered %d", resp.StatusCode)
					}
					price = p.Price
				}
			}
			if err != nil {
				http.Error(w, "pricing: "+err.Error(), http.StatusBadGateway)
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"nonce\": %q, \"stock\": %d, \"orders\": %d, \"price\": %d}\n",
			nonce, n, orders, price)
	})
	log.Printf("inventory (go) listening on %s", *listen)
	srv := &http.Server{Addr: *listen, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
