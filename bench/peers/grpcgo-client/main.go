// SPDX-License-Identifier: MIT

// A grpc-go load client, the peer of mica's gRPC client in
// bench/load/resilience.sh: `-conc` goroutines call Echo/Unary
// (tests/interop/proto/echo.proto) back to back on one connection for
// `-duration` ms, then it prints one JSON line like
// tests/integration/resilience_client's last one:
//
//	{"final":1,"calls":N,"fail":N,"p50_us":N,"p99_us":N,"cpu_s":F}
//
// cpu_s is the process's user + system time over the run (getrusage), so
// calls / cpu_s is the client's own cost. Built by tests/interop/go/build.sh.
//
// Usage: grpcgo-client -addr 127.0.0.1:PORT [-conc 64] [-duration 10000]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	pb "mica.test/interop"
)

func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func main() {
	addr := flag.String("addr", "", "server host:port")
	conc := flag.Int("conc", 64, "calls in flight")
	durMs := flag.Int("duration", 10000, "run time, ms")
	flag.Parse()
	if *addr == "" || *conc < 1 {
		fmt.Fprintln(os.Stderr, "usage: grpcgo-client -addr host:port [-conc n] [-duration ms]")
		os.Exit(2)
	}
	conn, err := grpc.Dial(*addr, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithTimeout(5*time.Second))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	defer conn.Close()
	client := pb.NewEchoClient(conn)

	var calls, fails int64
	lat := make([][]uint32, *conc) // per goroutine, merged at the end
	end := time.Now().Add(time.Duration(*durMs) * time.Millisecond)
	cpu0 := cpuSeconds()
	var wg sync.WaitGroup
	for g := 0; g < *conc; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			req := &pb.EchoRequest{Message: "x"}
			for time.Now().Before(end) {
				t0 := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := client.Unary(ctx, req)
				cancel()
				if err != nil {
					atomic.AddInt64(&fails, 1)
					continue
				}
				atomic.AddInt64(&calls, 1)
				lat[g] = append(lat[g], uint32(time.Since(t0).Microseconds()))
			}
		}(g)
	}
	wg.Wait()
	cpu := cpuSeconds() - cpu0
	var all []uint32
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) uint32 {
		if len(all) == 0 {
			return 0
		}
		return all[int(p*float64(len(all)-1))]
	}
	fmt.Printf("{\"final\":1,\"calls\":%d,\"fail\":%d,\"p50_us\":%d,\"p99_us\":%d,\"cpu_s\":%.3f}\n",
		calls, fails, pct(0.50), pct(0.99), cpu)
}
