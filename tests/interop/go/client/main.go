// SPDX-License-Identifier: MIT

// The interop matrix as a grpc-go client, against any Echo server
// (tests/interop/proto/echo.proto): mica's, grpc-js's or grpc-go's own. One
// line per case, `PASS <case> (<ms> ms)` or `FAIL <case>: <reason>`; exit
// status 0 only if every selected case passed. Same cases as
// tests/interop/js/client.js and tests/interop/echo_client.c.
//
// Usage: echo-client -addr 127.0.0.1:PORT [-cases a,b,c]
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"mica.test/interop/msgs"
)

var conn *grpc.ClientConn

const svc = "/mica.interop.Echo/"

func unary(ctx context.Context, req *msgs.EchoRequest, opts ...grpc.CallOption) (*msgs.EchoResponse, error) {
	var resp msgs.EchoResponse
	err := conn.Invoke(ctx, svc+"Unary", req, &resp, opts...)
	return &resp, err
}

func timeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

func wantCode(err error, want codes.Code) error {
	if got := status.Code(err); got != want {
		return fmt.Errorf("status %v (%v), want %v", got, err, want)
	}
	return nil
}

func stream(ctx context.Context, name string, server, client bool) (grpc.ClientStream, error) {
	return conn.NewStream(ctx, &grpc.StreamDesc{StreamName: name, ServerStreams: server,
		ClientStreams: client}, svc+name)
}

var cases = []struct {
	name string
	fn   func() error
}{
	{"unary", func() error {
		ctx, cancel := timeout(5 * time.Second)
		defer cancel()
		resp, err := unary(ctx, &msgs.EchoRequest{Message: "hello"})
		if err != nil {
			return err
		}
		if resp.Message != "hello" {
			return fmt.Errorf("message %q", resp.Message)
		}
		return nil
	}},
	{"unary_metadata", func() error {
		ctx, cancel := timeout(5 * time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, "x-echo-in", "v1")
		var header, trailer metadata.MD
		if _, err := unary(ctx, &msgs.EchoRequest{Message: "md"}, grpc.Header(&header),
			grpc.Trailer(&trailer)); err != nil {
			return err
		}
		if h, t := header.Get("x-echo-header"), trailer.Get("x-echo-trailer"); len(h) != 1 ||
			h[0] != "v1" || len(t) != 1 || t[0] != "v1" {
			return fmt.Errorf("header %v, trailer %v", h, t)
		}
		return nil
	}},
	{"unary_error", func() error {
		ctx, cancel := timeout(5 * time.Second)
		defer cancel()
		_, err := unary(ctx, &msgs.EchoRequest{Status: int32(codes.NotFound), StatusMessage: "no such thing"})
		if e := wantCode(err, codes.NotFound); e != nil {
			return e
		}
		if m := status.Convert(err).Message(); m != "no such thing" {
			return fmt.Errorf("message %q", m)
		}
		return nil
	}},
	{"unary_deadline", func() error {
		ctx, cancel := timeout(300 * time.Millisecond)
		defer cancel()
		t0 := time.Now()
		_, err := unary(ctx, &msgs.EchoRequest{DelayMs: 5000})
		if e := wantCode(err, codes.DeadlineExceeded); e != nil {
			return e
		}
		if d := time.Since(t0); d > 2*time.Second {
			return fmt.Errorf("took %v", d)
		}
		return nil
	}},
	{"unary_cancel", func() error {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(200*time.Millisecond, cancel)
		t0 := time.Now()
		_, err := unary(ctx, &msgs.EchoRequest{DelayMs: 5000})
		if e := wantCode(err, codes.Canceled); e != nil {
			return e
		}
		if d := time.Since(t0); d > 2*time.Second {
			return fmt.Errorf("took %v", d)
		}
		return nil
	}},
	{"unary_large", func() error {
		ctx, cancel := timeout(10 * time.Second)
		defer cancel()
		p := make([]byte, 3<<20)
		for i := range p {
			p[i] = byte(i * 7)
		}
		resp, err := unary(ctx, &msgs.EchoRequest{Payload: p})
		if err != nil {
			return err
		}
		if !bytes.Equal(resp.Payload, p) {
			return fmt.Errorf("payload differs (%d bytes back)", len(resp.Payload))
		}
		return nil
	}},
	{"unary_too_large", func() error {
		ctx, cancel := timeout(10 * time.Second)
		defer cancel()
		_, err := unary(ctx, &msgs.EchoRequest{Payload: make([]byte, 5<<20)})
		return wantCode(err, codes.ResourceExhausted)
	}},
	{"response_too_large", func() error {
		ctx, cancel := timeout(10 * time.Second)
		defer cancel()
		_, err := unary(ctx, &msgs.EchoRequest{ResponseSize: 5 << 20})
		return wantCode(err, codes.ResourceExhausted)
	}},
	{"server_stream", func() error {
		ctx, cancel := timeout(5 * time.Second)
		defer cancel()
		got, err := serverStream(ctx, &msgs.EchoRequest{Message: "s", Count: 5})
		if err != nil {
			return err
		}
		if len(got) != 5 {
			return fmt.Errorf("%d messages", len(got))
		}
		for i, r := range got {
			if r.Index != int32(i) {
				return fmt.Errorf("message %d has index %d", i, r.Index)
			}
		}
		return nil
	}},
	{"server_stream_error", func() error {
		ctx, cancel := timeout(5 * time.Second)
		defer cancel()
		got, err := serverStream(ctx, &msgs.EchoRequest{Count: 3,
			Status: int32(codes.FailedPrecondition), StatusMessage: "stop"})
		if e := wantCode(err, codes.FailedPrecondition); e != nil {
			return e
		}
		if len(got) != 3 || status.Convert(err).Message() != "stop" {
			return fmt.Errorf("%d messages, %v", len(got), err)
		}
		return nil
	}},
	{"client_stream", func() error {
		ctx, cancel := timeout(5 * time.Second)
		defer cancel()
		s, err := stream(ctx, "ClientStream", false, true)
		if err != nil {
			return err
		}
		for _, m := range []string{"a", "b", "c"} {
			if err := s.SendMsg(&msgs.EchoRequest{Message: m, Payload: make([]byte, 1024)}); err != nil {
				return err
			}
		}
		if err := s.CloseSend(); err != nil {
			return err
		}
		var resp msgs.EchoResponse
		if err := s.RecvMsg(&resp); err != nil {
			return err
		}
		if resp.Message != "a,b,c" || resp.Index != 3 || string(resp.Payload) != "3072" {
			return fmt.Errorf("got %q %d %q", resp.Message, resp.Index, resp.Payload)
		}
		return nil
	}},
	{"bidi", func() error { return bidi(10, -1, codes.OK, 10) }},
	{"bidi_error", func() error { return bidi(3, 1, codes.ResourceExhausted, 1) }},
	{"unimplemented", func() error {
		ctx, cancel := timeout(5 * time.Second)
		defer cancel()
		var resp msgs.EchoResponse
		return wantCode(conn.Invoke(ctx, svc+"Nope", &msgs.EchoRequest{}, &resp), codes.Unimplemented)
	}},
	{"unknown_service", func() error {
		ctx, cancel := timeout(5 * time.Second)
		defer cancel()
		var resp msgs.EchoResponse
		err := conn.Invoke(ctx, "/mica.interop.Nope/Unary", &msgs.EchoRequest{}, &resp)
		return wantCode(err, codes.Unimplemented)
	}},
	{"health_check", func() error {
		ctx, cancel := timeout(5 * time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("status %v", resp.Status)
		}
		return nil
	}},
	{"health_watch", func() error {
		ctx, cancel := timeout(5 * time.Second)
		defer cancel()
		w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		resp, err := w.Recv()
		if err != nil {
			return err
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("status %v", resp.Status)
		}
		return nil
	}},
	{"many_streams", func() error {
		ctx, cancel := timeout(10 * time.Second)
		defer cancel()
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok := 0
		for i := 0; i < 100; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := unary(ctx, &msgs.EchoRequest{Message: "many"}); err == nil {
					mu.Lock()
					ok++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if ok != 100 {
			return fmt.Errorf("%d of 100 OK", ok)
		}
		return nil
	}},
}

func serverStream(ctx context.Context, req *msgs.EchoRequest) ([]*msgs.EchoResponse, error) {
	s, err := stream(ctx, "ServerStream", true, false)
	if err != nil {
		return nil, err
	}
	if err := s.SendMsg(req); err != nil {
		return nil, err
	}
	if err := s.CloseSend(); err != nil {
		return nil, err
	}
	var got []*msgs.EchoResponse
	for {
		var r msgs.EchoResponse
		err := s.RecvMsg(&r)
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		got = append(got, &r)
	}
}

// bidi sends n requests in lock step (each answer read before the next is
// sent); request failAt asks the server to end the call with code want.
func bidi(n, failAt int, want codes.Code, wantAnswers int) error {
	ctx, cancel := timeout(5 * time.Second)
	defer cancel()
	s, err := stream(ctx, "Bidi", true, true)
	if err != nil {
		return err
	}
	answers := 0
	var end error
	for i := 0; i < n; i++ {
		req := &msgs.EchoRequest{Message: fmt.Sprintf("m%d", i)}
		if i == failAt {
			req.Status = int32(want)
		}
		if end = s.SendMsg(req); end != nil {
			break
		}
		var r msgs.EchoResponse
		if end = s.RecvMsg(&r); end != nil {
			break
		}
		if r.Index != int32(i) || r.Message != req.Message {
			return fmt.Errorf("answer %d: %d %q", i, r.Index, r.Message)
		}
		answers++
	}
	if end == nil || end == io.EOF {
		s.CloseSend()
		var r msgs.EchoResponse
		end = s.RecvMsg(&r)
	}
	if end == io.EOF {
		end = nil
	}
	if e := wantCode(end, want); e != nil {
		return e
	}
	if answers != wantAnswers {
		return fmt.Errorf("%d answers", answers)
	}
	return nil
}

func main() {
	addr := flag.String("addr", "", "server address host:port")
	only := flag.String("cases", "", "comma-separated cases to run (default: all)")
	flag.Parse()
	if *addr == "" {
		fmt.Fprintln(os.Stderr, "usage: echo-client -addr HOST:PORT [-cases a,b,c]")
		os.Exit(2)
	}
	var err error
	conn, err = grpc.Dial(*addr, grpc.WithInsecure())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	selected := map[string]bool{}
	for _, c := range strings.Split(*only, ",") {
		if c != "" {
			selected[c] = true
		}
	}
	failed := 0
	for _, c := range cases {
		if len(selected) > 0 && !selected[c.name] {
			continue
		}
		t0 := time.Now()
		if err := c.fn(); err != nil {
			fmt.Printf("FAIL %s: %s\n", c.name, strings.ReplaceAll(err.Error(), "\n", " "))
			failed++
		} else {
			fmt.Printf("PASS %s (%d ms)\n", c.name, time.Since(t0).Milliseconds())
		}
	}
	if failed > 0 {
		os.Exit(1)
	}
}
