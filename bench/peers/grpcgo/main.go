// SPDX-License-Identifier: MIT

// The seed's UserService (examples/user/user.proto) in grpc-go: the peer of
// the gRPC benchmark (bench/load/grpc.sh), which runs it with GOMAXPROCS=1.
// GetUser reads an in-memory table; an unknown id is NOT_FOUND, an empty one
// INVALID_ARGUMENT. Nothing is logged per call.
//
// Usage: grpcgo-user [-addr :50051] [-cert cert.pem -key key.pem (TLS)]
//
// Built by tests/interop/go/build.sh (into <outdir>/grpcgo-user), which
// generates the package mica.example/user from user.proto.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"

	pb "mica.example/user"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

type user struct {
	name string
	age  int32
}

// The table is never written, so calls share it without a lock. Each call
// gets a response of its own: marshalling writes the message's size cache.
var users = map[string]user{
	"1001": {"Alice", 30},
	"1002": {"Bob", 25},
	"1003": {"Carol", 35},
}

type userServer struct {
	pb.UnimplementedUserServiceServer
}

func (userServer) GetUser(_ context.Context, req *pb.UserRequest) (*pb.UserResponse, error) {
	if req.UserId == "" {
		return nil, status.Error(codes.InvalidArgument, "user_id is empty")
	}
	u, ok := users[req.UserId]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no user %q", req.UserId)
	}
	return &pb.UserResponse{Name: u.name, Age: u.age}, nil
}

func main() {
	addr := flag.String("addr", ":50051", "listen address host:port")
	cert := flag.String("cert", "", "TLS: PEM certificate chain (with -key; default: cleartext h2c)")
	key := flag.String("key", "", "TLS: PEM private key")
	flag.Parse()
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	var opts []grpc.ServerOption
	if *cert != "" {
		creds, err := credentials.NewServerTLSFromFile(*cert, *key)
		if err != nil {
			log.Fatal(err)
		}
		opts = append(opts, grpc.Creds(creds))
	}
	s := grpc.NewServer(opts...)
	pb.RegisterUserServiceServer(s, userServer{})
	fmt.Printf("listening on %s\n", lis.Addr())
	log.Fatal(s.Serve(lis))
}
