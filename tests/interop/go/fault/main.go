// SPDX-License-Identifier: MIT

// A fault-injecting grpc-go backend for mica's resilience tests: the
// interop Echo service (Unary, ServerStream) whose behaviour a test switches
// at run time over HTTP on a control port, as tests/integration/fault_server.c
// does for mica:
//
//	POST /fault?error=0.5&code=14&delay_ms=20&tail=0.05&tail_ms=300&hang=1&pushback_ms=100
//	POST /reset   every connection to the gRPC port gets an RST
//	POST /exit    exits at once
//	GET  /stats   {"calls":N,"failed":N,"hung":N}
//
// A Unary answer's message is -name, so a client can tell who served a call.
//
// Usage: fault-server -name b0 -addr 127.0.0.1:PORT -control 127.0.0.1:PORT
// Prints "listening on <addr> control <addr>" once both are bound.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"math/rand"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "mica.test/interop"
)

type faults struct {
	errorRatio, tailRatio float64
	code                  codes.Code
	delay, tail           time.Duration
	hang                  bool
	pushback              int
}

var (
	mu                  sync.Mutex
	current             = faults{pushback: -1}
	calls, failed, hung int64
	name                string
)

func get() faults {
	mu.Lock()
	defer mu.Unlock()
	return current
}

// fault returns nil to serve the call, or the error to end it with.
func fault(ctx context.Context) error {
	atomic.AddInt64(&calls, 1)
	f := get()
	if f.hang {
		atomic.AddInt64(&hung, 1)
		<-ctx.Done()
		return status.FromContextError(ctx.Err()).Err()
	}
	d := f.delay
	if rand.Float64() < f.tailRatio {
		d += f.tail
	}
	if d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	if rand.Float64() < f.errorRatio {
		atomic.AddInt64(&failed, 1)
		if f.pushback >= 0 {
			grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", strconv.Itoa(f.pushback)))
		}
		c := f.code
		if c == 0 {
			c = codes.Unavailable
		}
		return status.Errorf(c, "injected by %s", name)
	}
	return nil
}

type echoServer struct {
	pb.UnimplementedEchoServer
}

func (echoServer) Unary(ctx context.Context, req *pb.EchoRequest) (*pb.EchoResponse, error) {
	if err := fault(ctx); err != nil {
		return nil, err
	}
	return &pb.EchoResponse{Message: name}, nil
}

func (echoServer) ServerStream(req *pb.EchoRequest, s pb.Echo_ServerStreamServer) error {
	if err := fault(s.Context()); err != nil {
		return err
	}
	for i := int32(0); i < req.Count; i++ {
		if err := s.Send(&pb.EchoResponse{Message: name, Index: i}); err != nil {
			return err
		}
	}
	return nil
}

// tracking keeps the accepted connections, so /reset can abort them.
type tracking struct {
	net.Listener
	mu    sync.Mutex
	conns map[*net.TCPConn]bool
}

func (l *tracking) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		if tc, ok := c.(*net.TCPConn); ok {
			l.mu.Lock()
			l.conns[tc] = true
			l.mu.Unlock()
		}
	}
	return c, err
}

func (l *tracking) reset() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for c := range l.conns {
		c.SetLinger(0) // close sends an RST
		c.Close()
		delete(l.conns, c)
		n++
	}
	return n
}

func number(r *http.Request, key string, def float64) float64 {
	v, err := strconv.ParseFloat(r.URL.Query().Get(key), 64)
	if err != nil {
		return def
	}
	return v
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "gRPC listen address")
	control := flag.String("control", "127.0.0.1:0", "control (HTTP) listen address")
	flag.StringVar(&name, "name", "backend", "the name Unary answers with")
	flag.Parse()
	raw, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	lis := &tracking{Listener: raw, conns: map[*net.TCPConn]bool{}}
	ctl, err := net.Listen("tcp", *control)
	if err != nil {
		log.Fatal(err)
	}
	s := grpc.NewServer()
	pb.RegisterEchoServer(s, &echoServer{})

	mux := http.NewServeMux()
	mux.HandleFunc("/fault", func(w http.ResponseWriter, r *http.Request) {
		f := faults{
			errorRatio: number(r, "error", 0),
			code:       codes.Code(number(r, "code", 0)),
			delay:      time.Duration(number(r, "delay_ms", 0)) * time.Millisecond,
			tailRatio:  number(r, "tail", 0),
			tail:       time.Duration(number(r, "tail_ms", 0)) * time.Millisecond,
			hang:       number(r, "hang", 0) != 0,
			pushback:   int(number(r, "pushback_ms", -1)),
		}
		mu.Lock()
		current = f
		mu.Unlock()
		fmt.Fprint(w, "ok")
	})
	mux.HandleFunc("/reset", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, lis.reset())
	})
	mux.HandleFunc("/exit", func(w http.ResponseWriter, r *http.Request) {
		os.Exit(3)
	})
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"calls":%d,"failed":%d,"hung":%d}`, atomic.LoadInt64(&calls),
			atomic.LoadInt64(&failed), atomic.LoadInt64(&hung))
	})
	go http.Serve(ctl, mux)
	fmt.Printf("listening on %s control %s\n", raw.Addr(), ctl.Addr())
	os.Stdout.Sync()
	if err := s.Serve(lis); err != nil {
		log.Fatal(err)
	}
}
