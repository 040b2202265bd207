// SPDX-License-Identifier: MIT

// The interop Echo service (tests/interop/proto/echo.proto) in grpc-go, plus
// the standard health service: the server mica's gRPC client is tested
// against. It does what the .proto's comments say, as the mica and grpc-js
// servers do (tests/interop/echo_server.c, tests/interop/js/server.js).
//
// Usage: echo-server -addr 127.0.0.1:PORT [-cert cert.pem -key key.pem (TLS)]
//
// Prints "listening on <addr>" once bound (port 0 picks a free port and the
// line shows the real one); exits 0 on SIGTERM or SIGINT.
//
// Built by tests/interop/go/build.sh, which generates the package
// mica.test/interop from echo.proto.
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
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "mica.test/interop"
)

// The largest request message this server accepts: grpc-go's default,
// spelled out because the unary_too_large case depends on it.
const maxMessageBytes = 4 << 20

type echoServer struct {
	pb.UnimplementedEchoServer
}

// echoMetadata sends the value of request header "x-echo-in" back as
// response header "x-echo-header" and trailer "x-echo-trailer". Both wait
// for the first message or the status, so a failed call gets them too.
func echoMetadata(ctx context.Context, setHeader func(metadata.MD) error, setTrailer func(metadata.MD)) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("x-echo-in"); len(v) > 0 {
		setHeader(metadata.Pairs("x-echo-header", v[0]))
		setTrailer(metadata.Pairs("x-echo-trailer", v[0]))
	}
}

// streamMetadata is echoMetadata for a streaming call.
func streamMetadata(s grpc.ServerStream) {
	echoMetadata(s.Context(), s.SetHeader, s.SetTrailer)
}

// sleep waits ms milliseconds, or fails with the call's own status
// (DEADLINE_EXCEEDED or CANCELED) as soon as the call ends.
func sleep(ctx context.Context, ms int32) error {
	if ms <= 0 {
		return nil
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

// requested is the error a request with a non-zero status asks for, or nil.
func requested(req *pb.EchoRequest) error {
	if req.Status == 0 {
		return nil
	}
	return status.Error(codes.Code(req.Status), req.StatusMessage)
}

// Unary echoes message and payload, or answers with response_size bytes of
// 'x', after delay_ms; fails with status if set.
func (echoServer) Unary(ctx context.Context, req *pb.EchoRequest) (*pb.EchoResponse, error) {
	echoMetadata(ctx, func(md metadata.MD) error { return grpc.SetHeader(ctx, md) },
		func(md metadata.MD) { grpc.SetTrailer(ctx, md) })
	if err := sleep(ctx, req.DelayMs); err != nil {
		return nil, err
	}
	if err := requested(req); err != nil {
		return nil, err
	}
	resp := &pb.EchoResponse{Message: req.Message, Payload: req.Payload}
	if req.ResponseSize > 0 {
		resp.Payload = []byte(strings.Repeat("x", int(req.ResponseSize)))
	}
	return resp, nil
}

// ServerStream sends count responses {message, index}, each after delay_ms;
// then fails with status if set.
func (echoServer) ServerStream(req *pb.EchoRequest, s pb.Echo_ServerStreamServer) error {
	streamMetadata(s)
	for i := int32(0); i < req.Count; i++ {
		if err := sleep(s.Context(), req.DelayMs); err != nil {
			return err
		}
		if err := s.Send(&pb.EchoResponse{Message: req.Message, Index: i}); err != nil {
			return err
		}
	}
	return requested(req)
}

// ClientStream collects requests until the client half-closes, then answers
// once with the joined messages, their number and the total payload size as
// decimal text. A request with a non-zero status fails the call at once.
func (echoServer) ClientStream(s pb.Echo_ClientStreamServer) error {
	streamMetadata(s)
	var messages []string
	payloadBytes := 0
	for {
		req, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if err := requested(req); err != nil {
			return err
		}
		messages = append(messages, req.Message)
		payloadBytes += len(req.Payload)
	}
	return s.SendAndClose(&pb.EchoResponse{
		Message: strings.Join(messages, ","),
		Index:   int32(len(messages)),
		Payload: []byte(strconv.Itoa(payloadBytes)),
	})
}

// Bidi answers each request at once with {message, index = its position}; a
// request with a non-zero status ends the call with it, a half-close with OK.
func (echoServer) Bidi(s pb.Echo_BidiServer) error {
	streamMetadata(s)
	for i := int32(0); ; i++ {
		req, err := s.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := requested(req); err != nil {
			return err
		}
		if err := s.Send(&pb.EchoResponse{Message: req.Message, Index: i}); err != nil {
			return err
		}
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50053", "listen address host:port")
	cert := flag.String("cert", "", "TLS: PEM certificate chain (with -key; default: cleartext h2c)")
	key := flag.String("key", "", "TLS: PEM private key")
	flag.Parse()
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(maxMessageBytes)}
	if *cert != "" {
		creds, err := credentials.NewServerTLSFromFile(*cert, *key)
		if err != nil {
			log.Fatal(err)
		}
		opts = append(opts, grpc.Creds(creds))
	}
	s := grpc.NewServer(opts...)
	pb.RegisterEchoServer(s, echoServer{})

	// health.NewServer reports SERVING for "" (the whole server) already.
	hs := health.NewServer()
	hs.SetServingStatus("mica.interop.Echo", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)

	// Stop, not GracefulStop: a health Watch never ends by itself.
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
