// SPDX-License-Identifier: MIT

// The interop Echo service (tests/interop/proto/echo.proto) in grpc-go, with
// the standard health service: the server mica's client is tested against.
// Semantics are the .proto's comments, as in tests/interop/echo_server.c and
// tests/interop/js/server.js. Prints "listening on <addr>"; exits 0 on SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"mica.test/interop/msgs"
)

// echoMetadata sends x-echo-in back as header x-echo-header and trailer x-echo-trailer.
func echoMetadata(ctx context.Context, setHeader func(metadata.MD) error, setTrailer func(metadata.MD)) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("x-echo-in"); len(v) > 0 {
		setHeader(metadata.Pairs("x-echo-header", v[0]))
		setTrailer(metadata.Pairs("x-echo-trailer", v[0]))
	}
}

func sleep(ctx context.Context, ms int32) error {
	if ms <= 0 {
		return nil
	}
	select {
	case <-time.After(time.Duration(ms) * time.Millisecond):
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

func fail(req *msgs.EchoRequest) error {
	return status.Error(codes.Code(req.Status), req.StatusMessage)
}

func unary(_ interface{}, ctx context.Context, dec func(interface{}) error,
	_ grpc.UnaryServerInterceptor) (interface{}, error) {
	var req msgs.EchoRequest
	if err := dec(&req); err != nil {
		return nil, err
	}
	echoMetadata(ctx, func(md metadata.MD) error { return grpc.SetHeader(ctx, md) },
		func(md metadata.MD) { grpc.SetTrailer(ctx, md) })
	if err := sleep(ctx, req.DelayMs); err != nil {
		return nil, err
	}
	if req.Status != 0 {
		return nil, fail(&req)
	}
	resp := &msgs.EchoResponse{Message: req.Message, Payload: req.Payload}
	if req.ResponseSize > 0 {
		resp.Payload = []byte(strings.Repeat("x", int(req.ResponseSize)))
	}
	return resp, nil
}

func withMetadata(s grpc.ServerStream) {
	echoMetadata(s.Context(), s.SetHeader, s.SetTrailer)
}

func serverStream(_ interface{}, s grpc.ServerStream) error {
	withMetadata(s)
	var req msgs.EchoRequest
	if err := s.RecvMsg(&req); err != nil {
		return err
	}
	for i := int32(0); i < req.Count; i++ {
		if err := sleep(s.Context(), req.DelayMs); err != nil {
			return err
		}
		if err := s.SendMsg(&msgs.EchoResponse{Message: req.Message, Index: i}); err != nil {
			return err
		}
	}
	if req.Status != 0 {
		return fail(&req)
	}
	return nil
}

func clientStream(_ interface{}, s grpc.ServerStream) error {
	withMetadata(s)
	var parts []string
	total := 0
	for {
		var req msgs.EchoRequest
		err := s.RecvMsg(&req)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if req.Status != 0 {
			return fail(&req)
		}
		parts = append(parts, req.Message)
		total += len(req.Payload)
	}
	return s.SendMsg(&msgs.EchoResponse{Message: strings.Join(parts, ","),
		Index: int32(len(parts)), Payload: []byte(fmt.Sprint(total))})
}

func bidi(_ interface{}, s grpc.ServerStream) error {
	withMetadata(s)
	for i := int32(0); ; i++ {
		var req msgs.EchoRequest
		err := s.RecvMsg(&req)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if req.Status != 0 {
			return fail(&req)
		}
		if err := s.SendMsg(&msgs.EchoResponse{Message: req.Message, Index: i}); err != nil {
			return err
		}
	}
}

// The ServiceDesc protoc-gen-go-grpc would generate for mica.interop.Echo.
var echoService = grpc.ServiceDesc{
	ServiceName: "mica.interop.Echo",
	HandlerType: (*interface{})(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Unary", Handler: unary}},
	Streams: []grpc.StreamDesc{
		{StreamName: "ServerStream", Handler: serverStream, ServerStreams: true},
		{StreamName: "ClientStream", Handler: clientStream, ClientStreams: true},
		{StreamName: "Bidi", Handler: bidi, ServerStreams: true, ClientStreams: true},
	},
	Metadata: "echo.proto",
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50053", "listen address")
	flag.Parse()
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	s := grpc.NewServer()
	s.RegisterService(&echoService, struct{}{})
	hs := health.NewServer()
	hs.SetServingStatus("mica.interop.Echo", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		hs.Shutdown()
		s.Stop()
	}()
	fmt.Printf("listening on %s\n", lis.Addr())
	if err := s.Serve(lis); err != nil {
		log.Fatal(err)
	}
}
