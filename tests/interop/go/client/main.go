// SPDX-License-Identifier: MIT

// The interop matrix as a grpc-go client, against any server of the Echo
// service (tests/interop/proto/echo.proto): mica's, grpc-js's or grpc-go's
// own. Same cases and output as tests/interop/echo_client.c and
// tests/interop/js/client.js: one line per case, `PASS <case> (<ms> ms)` or
// `FAIL <case>: <reason>`, and exit status 0 only if every selected case
// passed (1 if one failed, 2 for a usage error).
//
// Usage: echo-client -addr 127.0.0.1:PORT [-cases a,b,c] [-ca ca.pem (TLS)]
//
// Every case has its own deadline, and the whole run has one too (-budget,
// 25 s): a server that hangs fails cases, it never hangs the client.
//
// Built by tests/interop/go/build.sh, which generates the package
// mica.test/interop from echo.proto.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding/gzip"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "mica.test/interop"
)

// The largest response this client accepts: grpc-go's default, spelled out
// because the response_too_large case depends on it.
const maxMessageBytes = 4 << 20

var (
	conn   *grpc.ClientConn
	echo   pb.EchoClient
	health healthpb.HealthClient
)

// A case runs with a context that ends at its deadline.
type testCase struct {
	name    string
	timeout time.Duration
	run     func(ctx context.Context) error
}

var cases = []testCase{
	{"unary", 5 * time.Second, unary},
	{"unary_metadata", 5 * time.Second, unaryMetadata},
	{"unary_error", 5 * time.Second, unaryError},
	{"unary_deadline", 5 * time.Second, unaryDeadline},
	{"unary_cancel", 5 * time.Second, unaryCancel},
	{"unary_large", 10 * time.Second, unaryLarge},
	{"unary_gzip", 10 * time.Second, unaryGzip},
	{"unary_too_large", 10 * time.Second, unaryTooLarge},
	{"response_too_large", 10 * time.Second, responseTooLarge},
	{"server_stream", 5 * time.Second, serverStream},
	{"server_stream_error", 5 * time.Second, serverStreamError},
	{"client_stream", 5 * time.Second, clientStream},
	{"bidi", 5 * time.Second, bidi},
	{"bidi_error", 5 * time.Second, bidiError},
	{"unimplemented", 5 * time.Second, unimplemented},
	{"unknown_service", 5 * time.Second, unknownService},
	{"health_check", 5 * time.Second, healthCheck},
	{"health_watch", 5 * time.Second, healthWatch},
	{"many_streams", 10 * time.Second, manyStreams},
}

// ---- helpers ----------------------------------------------------------------

// The codes' names as the gRPC spec spells them (Go's String() is CamelCase).
var codeNames = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

// describe names an error by its gRPC status, "NOT_FOUND (no such thing)",
// or returns its text if it has none (a check of ours that failed).
func describe(err error) string {
	if err == nil {
		return "OK"
	}
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	name := fmt.Sprintf("code %d", st.Code())
	if int(st.Code()) < len(codeNames) {
		name = codeNames[st.Code()]
	}
	if st.Message() == "" {
		return name
	}
	return fmt.Sprintf("%s (%s)", name, st.Message())
}

// wantStatus checks that err carries code want and, if msg is not empty,
// that message.
func wantStatus(err error, want codes.Code, msg string) error {
	st := status.Convert(err)
	if err == nil || st.Code() != want || (msg != "" && st.Message() != msg) {
		return fmt.Errorf("got %s, want %s", describe(err), describe(status.Error(want, msg)))
	}
	return nil
}

// within runs call and fails if it took longer than limit.
func within(limit time.Duration, call func() error) error {
	t0 := time.Now()
	err := call()
	if d := time.Since(t0); d > limit {
		return fmt.Errorf("took %d ms, want under %d ms", d.Milliseconds(), limit.Milliseconds())
	}
	return err
}

// pattern is n bytes that differ from their neighbours, so a shifted or
// truncated echo does not compare equal.
func pattern(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i % 251)
	}
	return p
}

// ---- unary --------------------------------------------------------------------

func unary(ctx context.Context) error {
	req := &pb.EchoRequest{Message: "hello", Payload: []byte("payload")}
	resp, err := echo.Unary(ctx, req)
	if err != nil {
		return errors.New(describe(err))
	}
	if resp.Message != req.Message || !bytes.Equal(resp.Payload, req.Payload) {
		return fmt.Errorf("got {%q, %q}, want {%q, %q}", resp.Message, resp.Payload, req.Message, req.Payload)
	}
	return nil
}

// unaryGzip sends a gzip-compressed request (grpc-encoding: gzip) whose
// payload inflates to 1 MiB, and wants it echoed.
func unaryGzip(ctx context.Context) error {
	req := &pb.EchoRequest{Message: "gzip", Payload: bytes.Repeat([]byte("compressible "), 80660)}
	resp, err := echo.Unary(ctx, req, grpc.UseCompressor(gzip.Name))
	if err != nil {
		return errors.New(describe(err))
	}
	if resp.Message != req.Message || !bytes.Equal(resp.Payload, req.Payload) {
		return fmt.Errorf("got {%q, %d bytes}, want {%q, %d bytes}", resp.Message, len(resp.Payload),
			req.Message, len(req.Payload))
	}
	return nil
}

func unaryMetadata(ctx context.Context) error {
	ctx = metadata.AppendToOutgoingContext(ctx, "x-echo-in", "v1")
	var header, trailer metadata.MD
	if _, err := echo.Unary(ctx, &pb.EchoRequest{Message: "md"}, grpc.Header(&header),
		grpc.Trailer(&trailer)); err != nil {
		return errors.New(describe(err))
	}
	h, t := header.Get("x-echo-header"), trailer.Get("x-echo-trailer")
	if len(h) != 1 || h[0] != "v1" || len(t) != 1 || t[0] != "v1" {
		return fmt.Errorf("header x-echo-header %q, trailer x-echo-trailer %q; want [v1] both", h, t)
	}
	return nil
}

func unaryError(ctx context.Context) error {
	_, err := echo.Unary(ctx, &pb.EchoRequest{Status: int32(codes.NotFound), StatusMessage: "no such thing"})
	return wantStatus(err, codes.NotFound, "no such thing")
}

// stillServing checks that the connection serves calls after one was reset:
// the deadline and cancel cases would pass against a server that never
// answers at all without it.
func stillServing(ctx context.Context, what string) error {
	if _, err := echo.Unary(ctx, &pb.EchoRequest{Message: "after"}); err != nil {
		return fmt.Errorf("the call after the %s: %s", what, describe(err))
	}
	return nil
}

// The server sleeps 5 s; the call's 300 ms deadline must end it well before.
func unaryDeadline(ctx context.Context) error {
	err := within(2*time.Second, func() error {
		ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := echo.Unary(ctx, &pb.EchoRequest{DelayMs: 5000})
		return wantStatus(err, codes.DeadlineExceeded, "")
	})
	if err != nil {
		return err
	}
	return stillServing(ctx, "deadline")
}

// The server sleeps 5 s; the client cancels after 200 ms.
func unaryCancel(ctx context.Context) error {
	err := within(2*time.Second, func() error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		time.AfterFunc(200*time.Millisecond, cancel)
		_, err := echo.Unary(ctx, &pb.EchoRequest{DelayMs: 5000})
		return wantStatus(err, codes.Canceled, "")
	})
	if err != nil {
		return err
	}
	return stillServing(ctx, "cancel")
}

// 3 MiB: below the 4 MiB limit both ways, above any single HTTP/2 window.
func unaryLarge(ctx context.Context) error {
	p := pattern(3 << 20)
	resp, err := echo.Unary(ctx, &pb.EchoRequest{Payload: p})
	if err != nil {
		return errors.New(describe(err))
	}
	if !bytes.Equal(resp.Payload, p) {
		return fmt.Errorf("payload of %d bytes came back as %d bytes, not byte-exact", len(p), len(resp.Payload))
	}
	return nil
}

// A 5 MiB request: over the server's 4 MiB limit.
func unaryTooLarge(ctx context.Context) error {
	_, err := echo.Unary(ctx, &pb.EchoRequest{Payload: pattern(5 << 20)})
	return wantStatus(err, codes.ResourceExhausted, "")
}

// A 5 MiB response: over this client's 4 MiB limit, so the client fails it.
func responseTooLarge(ctx context.Context) error {
	_, err := echo.Unary(ctx, &pb.EchoRequest{ResponseSize: 5 << 20})
	return wantStatus(err, codes.ResourceExhausted, "")
}

// ---- streaming ------------------------------------------------------------------

// readServerStream collects a ServerStream call's responses and its status
// (nil for OK).
func readServerStream(ctx context.Context, req *pb.EchoRequest) ([]*pb.EchoResponse, error) {
	s, err := echo.ServerStream(ctx, req)
	if err != nil {
		return nil, err
	}
	var got []*pb.EchoResponse
	for {
		r, err := s.Recv()
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		got = append(got, r)
	}
}

// checkIndexes checks that got is n responses {message, index 0..n-1}.
func checkIndexes(got []*pb.EchoResponse, n int, message string) error {
	if len(got) != n {
		return fmt.Errorf("%d responses, want %d", len(got), n)
	}
	for i, r := range got {
		if r.Index != int32(i) || r.Message != message {
			return fmt.Errorf("response %d is {%q, index %d}, want {%q, index %d}", i, r.Message, r.Index, message, i)
		}
	}
	return nil
}

func serverStream(ctx context.Context) error {
	got, err := readServerStream(ctx, &pb.EchoRequest{Message: "s", Count: 5})
	if err != nil {
		return fmt.Errorf("after %d responses: %s", len(got), describe(err))
	}
	return checkIndexes(got, 5, "s")
}

func serverStreamError(ctx context.Context) error {
	got, err := readServerStream(ctx, &pb.EchoRequest{Message: "e", Count: 3,
		Status: int32(codes.FailedPrecondition), StatusMessage: "stop"})
	if e := wantStatus(err, codes.FailedPrecondition, "stop"); e != nil {
		return fmt.Errorf("after %d responses: %v", len(got), e)
	}
	return checkIndexes(got, 3, "e")
}

func clientStream(ctx context.Context) error {
	s, err := echo.ClientStream(ctx)
	if err != nil {
		return errors.New(describe(err))
	}
	for _, m := range []string{"a", "b", "c"} {
		if err := s.Send(&pb.EchoRequest{Message: m, Payload: pattern(1024)}); err != nil {
			break // the real error comes from CloseAndRecv
		}
	}
	resp, err := s.CloseAndRecv()
	if err != nil {
		return errors.New(describe(err))
	}
	if resp.Message != "a,b,c" || resp.Index != 3 || string(resp.Payload) != "3072" {
		return fmt.Errorf("got {%q, index %d, payload %q}, want {\"a,b,c\", index 3, payload \"3072\"}",
			resp.Message, resp.Index, resp.Payload)
	}
	return nil
}

// bidiStep sends req and reads its answer, which must be {req.message, index}.
func bidiStep(s pb.Echo_BidiClient, req *pb.EchoRequest, index int) error {
	if err := s.Send(req); err != nil && err != io.EOF {
		return err
	}
	// On io.EOF from Send the server has ended the call: Recv has its status.
	r, err := s.Recv()
	if err != nil {
		return err
	}
	if r.Message != req.Message || r.Index != int32(index) {
		return fmt.Errorf("answer %d is {%q, index %d}, want {%q, index %d}", index, r.Message, r.Index,
			req.Message, index)
	}
	return nil
}

// Ten requests in lock step: each answer is read before the next request is
// sent. Then a half-close, which the server ends with OK.
func bidi(ctx context.Context) error {
	s, err := echo.Bidi(ctx)
	if err != nil {
		return errors.New(describe(err))
	}
	for i := 0; i < 10; i++ {
		if err := bidiStep(s, &pb.EchoRequest{Message: fmt.Sprintf("m%d", i)}, i); err != nil {
			return fmt.Errorf("request %d: %s", i, describe(err))
		}
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	if r, err := s.Recv(); err != io.EOF {
		if err == nil {
			return fmt.Errorf("an 11th answer {%q, index %d} after the half-close", r.Message, r.Index)
		}
		return fmt.Errorf("after the half-close: %s", describe(err))
	}
	return nil
}

// The first request is answered; the second asks for RESOURCE_EXHAUSTED, which
// must end the call instead of an answer.
func bidiError(ctx context.Context) error {
	s, err := echo.Bidi(ctx)
	if err != nil {
		return errors.New(describe(err))
	}
	if err := bidiStep(s, &pb.EchoRequest{Message: "first"}, 0); err != nil {
		return fmt.Errorf("first request: %s", describe(err))
	}
	err = bidiStep(s, &pb.EchoRequest{Message: "second", Status: int32(codes.ResourceExhausted),
		StatusMessage: "enough"}, 1)
	return wantStatus(err, codes.ResourceExhausted, "enough")
}

// ---- unknown methods, health, concurrency ---------------------------------------

func unimplemented(ctx context.Context) error {
	err := conn.Invoke(ctx, "/mica.interop.Echo/Nope", &pb.EchoRequest{}, &pb.EchoResponse{})
	return wantStatus(err, codes.Unimplemented, "")
}

func unknownService(ctx context.Context) error {
	err := conn.Invoke(ctx, "/mica.interop.Nope/Unary", &pb.EchoRequest{}, &pb.EchoResponse{})
	return wantStatus(err, codes.Unimplemented, "")
}

func healthCheck(ctx context.Context) error {
	resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: ""})
	if err != nil {
		return errors.New(describe(err))
	}
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("status %v, want SERVING", resp.Status)
	}
	return nil
}

// Watch stays open after its first message; the case's context ends it.
func healthWatch(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := health.Watch(ctx, &healthpb.HealthCheckRequest{Service: ""})
	if err != nil {
		return errors.New(describe(err))
	}
	resp, err := w.Recv()
	if err != nil {
		return errors.New(describe(err))
	}
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("first status %v, want SERVING", resp.Status)
	}
	return nil
}

// 100 unary calls at once on the one connection, each with its own message.
func manyStreams(ctx context.Context) error {
	const n = 100
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			msg := fmt.Sprintf("call %d", i)
			resp, err := echo.Unary(ctx, &pb.EchoRequest{Message: msg})
			if err != nil {
				errs[i] = errors.New(describe(err))
			} else if resp.Message != msg {
				errs[i] = fmt.Errorf("got %q, want %q", resp.Message, msg)
			}
		}(i)
	}
	wg.Wait()
	failed, first := 0, -1
	for i, err := range errs {
		if err != nil {
			if first < 0 {
				first = i
			}
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d calls failed; call %d: %v", failed, n, first, errs[first])
	}
	return nil
}

// ---- main -----------------------------------------------------------------------

// runCase runs c within its own deadline and what is left of the run's, and
// returns how long it took and its failure, if any. A case that ignores its
// context (a grpc-go bug, in effect) is abandoned a second past its deadline.
func runCase(c testCase, runEnd time.Time) (time.Duration, error) {
	t0 := time.Now()
	end := t0.Add(c.timeout)
	if runEnd.Before(end) {
		end = runEnd
	}
	if !end.After(t0) {
		return 0, errors.New("not run: the run's budget is spent")
	}
	ctx, cancel := context.WithDeadline(context.Background(), end)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.run(ctx) }()
	select {
	case err := <-done:
		return time.Since(t0), err
	case <-time.After(time.Until(end) + time.Second):
		return time.Since(t0), fmt.Errorf("still running %d ms after its deadline", time.Second.Milliseconds())
	}
}

func main() {
	addr := flag.String("addr", "", "server address host:port")
	only := flag.String("cases", "", "comma-separated cases to run (default: all)")
	budget := flag.Duration("budget", 25*time.Second, "deadline for the whole run")
	ca := flag.String("ca", "", "TLS: PEM file of the CA that signed the server's certificate (default: cleartext h2c)")
	flag.Parse()
	if *addr == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: echo-client -addr HOST:PORT [-cases a,b,c] [-budget 25s] [-ca ca.pem]")
		os.Exit(2)
	}

	selected := map[string]bool{}
	for _, name := range strings.Split(*only, ",") {
		if name != "" {
			selected[name] = true
		}
	}
	for name := range selected {
		known := false
		for _, c := range cases {
			known = known || c.name == name
		}
		if !known {
			fmt.Fprintf(os.Stderr, "echo-client: unknown case %q\n", name)
			os.Exit(2)
		}
	}

	// Dial does not wait: the first call waits for the connection.
	var err error
	security := grpc.WithInsecure()
	if *ca != "" {
		creds, err := credentials.NewClientTLSFromFile(*ca, "")
		if err != nil {
			fmt.Fprintln(os.Stderr, "echo-client:", err)
			os.Exit(2)
		}
		security = grpc.WithTransportCredentials(creds)
	}
	conn, err = grpc.Dial(*addr, security,
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo-client:", err)
		os.Exit(2)
	}
	defer conn.Close()
	echo = pb.NewEchoClient(conn)
	health = healthpb.NewHealthClient(conn)

	runEnd := time.Now().Add(*budget)
	failed := 0
	for _, c := range cases {
		if len(selected) > 0 && !selected[c.name] {
			continue
		}
		took, err := runCase(c, runEnd)
		if err != nil {
			fmt.Printf("FAIL %s: %s\n", c.name, strings.ReplaceAll(err.Error(), "\n", " "))
			failed++
		} else {
			fmt.Printf("PASS %s (%d ms)\n", c.name, took.Milliseconds())
		}
	}
	if failed > 0 {
		conn.Close()
		os.Exit(1)
	}
}
