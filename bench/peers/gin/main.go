// SPDX-License-Identifier: MIT

// gin-peer is the seed's Gin service, the baseline mica's HTTP figures are
// compared with (bench/load/http.sh). It serves the seed's two routes:
//
//	GET /health -> {"status":"ok"}
//	GET /data   -> {"data":"processed quickly","message":"success"}
//
// By default it runs the way a production Gin service would be benchmarked:
// release mode, gin.New() with no logger or recovery middleware. `-default`
// or GIN_DEFAULT=1 uses gin.Default() (logger + recovery) exactly as in the
// seed. It listens on 127.0.0.1:$PORT (PORT defaults to 8080; a value with a
// colon is taken as a full host:port).
//
// Build offline from Debian's packaged sources:
//
//	GO111MODULE=off GOPATH=<dir>:/usr/share/gocode go build -o build/bench/gin-peer ./bench/peers/gin
package main

import (
	"flag"
	"log"
	"os"
	"strings"

	"github.com/gin-gonic/gin"
)

func main() {
	useDefault := flag.Bool("default", os.Getenv("GIN_DEFAULT") == "1",
		"use gin.Default() (logger + recovery) as in the seed; also GIN_DEFAULT=1")
	flag.Parse()

	gin.SetMode(gin.ReleaseMode)
	var r *gin.Engine
	if *useDefault {
		r = gin.Default()
	} else {
		r = gin.New()
	}

	r.GET("/health", func(c *gin.Context) {
		c.JSON(200, gin.H{"status": "ok"})
	})
	r.GET("/data", func(c *gin.Context) {
		c.JSON(200, gin.H{
			"message": "success",
			"data":    "processed quickly",
		})
	})

	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	addr := port
	if !strings.Contains(port, ":") {
		addr = "127.0.0.1:" + port
	}
	log.Printf("gin-peer: listening on %s (gin.Default=%v)", addr, *useDefault)
	if err := r.Run(addr); err != nil {
		log.Fatalf("gin-peer: %v", err)
	}
}
