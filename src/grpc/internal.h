/* SPDX-License-Identifier: MIT */
/* gRPC internals shared by the files of src/grpc. */
#ifndef MICA_GRPC_INTERNAL_H
#define MICA_GRPC_INTERNAL_H

#include <stdbool.h>

#include "mica/grpc.h"

typedef struct mica__grpc_method {
    char *path; /* "/pkg.Service/Method" */
    size_t path_len;
    const ProtobufCServiceDescriptor *service;
    const ProtobufCMethodDescriptor *method;
    mica_grpc_kind_t kind;
    mica_grpc_handler_fn fn;
    void *arg;
} mica__grpc_method_t;

/* The methods of one HTTP server (its stream_arg). */
typedef struct mica__grpc_registry {
    mica_http_server_t *srv;
    mica__grpc_method_t *methods;
    size_t n, cap;
} mica__grpc_registry_t;

/* Returns the server's registry, creating it and hooking it to HTTP/2 on first use (NULL: ENOMEM). */
mica__grpc_registry_t *mica__grpc_registry(mica_http_server_t *srv);
/* Whether a method of service `name` ("user.UserService") is registered. */
bool mica__grpc_has_service(const mica__grpc_registry_t *r, const char *name);

#endif /* MICA_GRPC_INTERNAL_H */
