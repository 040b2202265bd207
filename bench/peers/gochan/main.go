// SPDX-License-Identifier: MIT
//
// gochan-peer: the Go side of bench/micro/bench_chan.c. The same loops, the
// same figure names, the same `<name>: <ns> ns` lines, under whatever
// GOMAXPROCS the environment gives (bench/micro/chan.sh runs it with 1 and 2).
// With GOMAXPROCS > 1 the "same_worker" figures may cross Ps: the name keeps
// the loop it measures comparable, the table column says the GOMAXPROCS.
//
// Go has no counterpart to the cross-worker and offload figures: the
// scheduler decides where goroutines run, and blocking system calls are
// handed off implicitly, so those lines are not printed.
//
// Build (standard library only, offline):
//
//	GO111MODULE=off GOPATH=/tmp/gopath go build -o build/bench/gochan-peer bench/peers/gochan/main.go
//
// Usage: gochan-peer [scale]   (scale multiplies the loop counts)
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
)

var scale = 1.0

func loops(n int) int {
	k := int(float64(n) * scale)
	if k < 1000 {
		k = 1000
	}
	return k
}

func report(name string, d time.Duration, n int) {
	fmt.Printf("%s: %.1f ns\n", name, float64(d.Nanoseconds())/float64(n))
}

// Unbuffered ping -> pong between two goroutines.
func benchPingPong(n int) {
	a, b := make(chan int), make(chan int)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for v := range a {
			b <- v
		}
	}()
	v := 0
	for i := 0; i < n/10; i++ {
		a <- v
		v = <-b
	}
	t0 := time.Now()
	for i := 0; i < n; i++ {
		a <- v
		v = <-b
	}
	d := time.Since(t0)
	close(a)
	wg.Wait()
	report("chan_unbuffered_roundtrip_same_worker", d, n)
	report("chan_unbuffered_handoff_same_worker", d, 2*n)
}

const buf = 128

// One goroutine: send then receive on a buffered channel, no switch.
func benchBufferedSameG(n int) {
	ch := make(chan int, buf)
	batches := n / buf
	var t0 time.Time
	for k := -batches / 10; k < batches; k++ {
		if k == 0 {
			t0 = time.Now()
		}
		for i := 0; i < buf; i++ {
			ch <- i
		}
		for i := 0; i < buf; i++ {
			<-ch
		}
	}
	report("chan_buffered_send_recv_same_worker", time.Since(t0), batches*buf)
}

// Producer -> consumer through 128 slots, per element.
func benchStream(n int) {
	ch := make(chan int, buf)
	total := n + n/10
	go func() {
		for i := 0; i < total; i++ {
			ch <- i
		}
		close(ch)
	}()
	for i := 0; i < n/10; i++ {
		<-ch
	}
	t0 := time.Now()
	got := 0
	for range ch {
		got++
	}
	report("chan_buffered_stream_same_worker", time.Since(t0), got)
}

// select with 2 receive cases, both ready.
func benchSelectReady(n int) {
	const fill = 512
	a, b := make(chan int, fill), make(chan int, fill)
	batches := n / fill
	var total time.Duration
	fired := [2]int{}
	for k := -batches / 10; k < batches; k++ {
		for i := len(a); i < fill; i++ {
			a <- i
		}
		for i := len(b); i < fill; i++ {
			b <- i
		}
		t0 := time.Now()
		for i := 0; i < fill; i++ {
			select {
			case <-a:
				fired[0]++
			case <-b:
				fired[1]++
			}
		}
		if k >= 0 {
			total += time.Since(t0)
		}
	}
	if fired[0] == 0 || fired[1] == 0 {
		fmt.Fprintln(os.Stderr, "select never chose one case")
		os.Exit(1)
	}
	report("select_2_ready_same_worker", total, batches*fill)
}

// A select that parks and is woken by a send, then acknowledges.
func benchSelectBlocking(n int) {
	a, b, ack := make(chan int), make(chan int), make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case _, ok := <-a:
				if !ok {
					return
				}
			case <-b:
			}
			ack <- struct{}{}
		}
	}()
	var t0 time.Time
	for i := -n / 10; i < n; i++ {
		if i == 0 {
			t0 = time.Now()
		}
		if i&1 != 0 {
			a <- i
		} else {
			b <- i
		}
		<-ack
	}
	d := time.Since(t0)
	close(a)
	wg.Wait()
	report("select_2_blocking_roundtrip_same_worker", d, n)
}

// go func() { wg.Done() }() in batches of 1000, then wg.Wait().
func benchSpawn(n int) {
	const batch = 1000
	var wg sync.WaitGroup
	batches := n / batch
	var t0 time.Time
	for k := -batches / 10; k < batches; k++ {
		if k == 0 {
			t0 = time.Now()
		}
		wg.Add(batch)
		for i := 0; i < batch; i++ {
			go func() { wg.Done() }()
		}
		wg.Wait()
	}
	report("spawn_exit_same_worker", time.Since(t0), batches*batch)
}

func main() {
	if len(os.Args) > 1 {
		s, err := strconv.ParseFloat(os.Args[1], 64)
		if err != nil || s <= 0 {
			fmt.Fprintln(os.Stderr, "usage: gochan-peer [scale]")
			os.Exit(2)
		}
		scale = s
	}
	for _, f := range []func(){
		func() { benchPingPong(loops(2000000)) },
		func() { benchBufferedSameG(loops(5000000)) },
		func() { benchStream(loops(5000000)) },
		func() { benchSelectReady(loops(2000000)) },
		func() { benchSelectBlocking(loops(1000000)) },
		func() { benchSpawn(loops(1000000)) },
	} {
		runtime.GC()
		f()
	}
}
