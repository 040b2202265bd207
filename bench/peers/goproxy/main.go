// SPDX-License-Identifier: MIT

// goproxy is the Go peer of bench/load/proxy.sh: net/http/httputil's
// ReverseProxy in front of one upstream, the way a Go gateway forwards a
// request. Its Transport keeps up to 1024 idle connections to the upstream
// (the default of 2 would make most requests open a new one), so the figure
// is the proxy's own cost with upstream keep-alive, as for the others.
//
//	GOMAXPROCS=1 goproxy -listen 127.0.0.1:8080 -upstream http://127.0.0.1:8081
//
// Build offline with Debian's Go (standard library only):
//
//	GO111MODULE=off go build -o build/bench/goproxy-peer ./bench/peers/goproxy
package main

import (
	"flag"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "listen address")
	upstream := flag.String("upstream", "http://127.0.0.1:8081", "upstream URL")
	flag.Parse()
	u, err := url.Parse(*upstream)
	if err != nil {
		log.Fatal(err)
	}
	p := httputil.NewSingleHostReverseProxy(u)
	p.Transport = &http.Transport{
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
	}
	p.ErrorLog = log.New(log.Writer(), "goproxy: ", 0)
	srv := &http.Server{Addr: *listen, Handler: p}
	log.Fatal(srv.ListenAndServe())
}
