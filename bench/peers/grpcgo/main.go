// SPDX-License-Identifier: MIT

// The seed's UserService (000, 3.1) in grpc-go: the peer of the gRPC
// benchmark (bench/load/grpc.sh), run with GOMAXPROCS=1. GetUser reads an
// in-memory table; unknown id -> NOT_FOUND, empty id -> INVALID_ARGUMENT.
// No logging per call. Built by tests/interop/go/build.sh.
package main

import (
	"context"
	"flag"
	"log"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"mica.test/interop/msgs"
)

type user struct {
	name string
	age  int32
}

var users = map[string]user{"1001": {"Alice", 30}, "1002": {"Bob", 25}, "1003": {"Carol", 35}}

func getUser(srv interface{}, ctx context.Context, dec func(interface{}) error,
	_ grpc.UnaryServerInterceptor) (interface{}, error) {
	var req msgs.UserRequest
	if err := dec(&req); err != nil {
		return nil, err
	}
	if req.UserID == "" {
		return nil, status.Error(codes.InvalidArgument, "user_id is empty")
	}
	u, ok := users[req.UserID]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "user %s not found", req.UserID)
	}
	return &msgs.UserResponse{Name: u.name, Age: u.age}, nil
}

// The ServiceDesc protoc-gen-go-grpc would generate for user.UserService.
var userService = grpc.ServiceDesc{
	ServiceName: "user.UserService",
	HandlerType: (*interface{})(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "GetUser", Handler: getUser}},
	Metadata:    "user.proto",
}

func main() {
	addr := flag.String("addr", ":50051", "listen address")
	flag.Parse()
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	s := grpc.NewServer()
	s.RegisterService(&userService, struct{}{})
	log.Printf("listening on %s", lis.Addr())
	log.Fatal(s.Serve(lis))
}
