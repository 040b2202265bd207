/* SPDX-License-Identifier: MIT */
/* gRPC internals shared by the files of src/grpc. */
#ifndef MICA_GRPC_INTERNAL_H
#define MICA_GRPC_INTERNAL_H

#include <stdbool.h>

#include "common/list.h"
#include "mica/grpc.h"

typedef struct mica__grpc_method {
    mica__list_t link; /* on the server's methods */
    char *path;        /* "/pkg.Service/Method" */
    const ProtobufCServiceDescriptor *service;
    const ProtobufCMethodDescriptor *method;
    mica_grpc_kind_t kind;
    mica_grpc_handler_fn fn;
    void *arg;
    mica_grpc_server_t *gs;
} mica__grpc_method_t;

typedef struct mica__grpc_interceptor {
    mica_grpc_interceptor_fn fn;
    void *arg;
} mica__grpc_interceptor_t;

struct mica_grpc_server {
    mica_http_server_t *http; /* borrowed */
    mica_grpc_server_opts_t o;
    mica__list_t methods;
    mica__grpc_interceptor_t *ic;
    size_t nic;
};

/* Whether a method of service `name` ("user.UserService") is registered. */
bool mica__grpc_has_service(const mica_grpc_server_t *gs, const char *name);

#endif /* MICA_GRPC_INTERNAL_H */
