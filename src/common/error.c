/* SPDX-License-Identifier: MIT */
/* Lookups over the MICA_ERRNO_MAP table of include/mica/error.h, and its inverses. */
#include "mica/error.h"

const char *mica_strerror(int err)
{
    switch (err) {
#define MSG(name, value, http, grpc, msg)                                                  \
    case value:                                                                \
        return msg;
        MICA_ERRNO_MAP(MSG)
#undef MSG
    default:
        return "unknown error";
    }
}

const char *mica_err_name(int err)
{
    switch (err) {
#define NAME(name, value, http, grpc, msg)                                                 \
    case value:                                                                \
        return #name;
        MICA_ERRNO_MAP(NAME)
#undef NAME
    default:
        return "UNKNOWN";
    }
}

int mica_err_http_status(int err)
{
    switch (err) {
    case 0:
        return 200;
#define HTTP(name, value, http, grpc, msg)                                     \
    case value:                                                                \
        return http;
        MICA_ERRNO_MAP(HTTP)
#undef HTTP
    default:
        return 500;
    }
}

int mica_err_grpc_code(int err)
{
    switch (err) {
    case 0:
        return 0;
#define GRPC(name, value, http, grpc, msg)                                     \
    case value:                                                                \
        return grpc;
        MICA_ERRNO_MAP(GRPC)
#undef GRPC
    default:
        return 13; /* INTERNAL */
    }
}

/* The one code each gRPC status stands for; mica_err_grpc_code() maps each back. */
static const int from_grpc[17] = {
    0,                     /* OK */
    MICA_ECANCELED,        /* CANCELLED */
    MICA_EUNKNOWN,         /* UNKNOWN */
    MICA_EINVAL,           /* INVALID_ARGUMENT */
    MICA_ETIMEDOUT,        /* DEADLINE_EXCEEDED */
    MICA_ENOTFOUND,        /* NOT_FOUND */
    MICA_EEXIST,           /* ALREADY_EXISTS */
    MICA_EPERM,            /* PERMISSION_DENIED */
    MICA_ELIMIT,           /* RESOURCE_EXHAUSTED */
    MICA_EPRECONDITION,    /* FAILED_PRECONDITION */
    MICA_EABORTED,         /* ABORTED */
    MICA_EOVERFLOW,        /* OUT_OF_RANGE */
    MICA_ENOSYS,           /* UNIMPLEMENTED */
    MICA_EINTERNAL,        /* INTERNAL */
    MICA_EUNAVAILABLE,     /* UNAVAILABLE */
    MICA_EIO,              /* DATA_LOSS */
    MICA_EUNAUTHENTICATED, /* UNAUTHENTICATED */
};

int mica_err_from_grpc(int code)
{
    return code >= 0 && code <= 16 ? from_grpc[code] : MICA_EINTERNAL;
}

int mica_err_from_http(int status)
{
    if (status >= 200 && status < 400)
        return 0;
    switch (status) {
    case 400: return MICA_EINVAL;
    case 401: return MICA_EUNAUTHENTICATED;
    case 403: return MICA_EPERM;
    case 404: return MICA_ENOTFOUND;
    case 408: return MICA_ETIMEDOUT;
    case 409: return MICA_EEXIST;
    case 412: return MICA_EPRECONDITION;
    case 413: return MICA_ELIMIT;
    case 415: return MICA_EUNSUPPORTED;
    case 429: return MICA_EOVERLOAD;
    case 501: return MICA_ENOSYS;
    case 502: return MICA_EUNAVAILABLE;
    case 503: return MICA_EUNAVAILABLE;
    case 504: return MICA_ETIMEDOUT;
    default: return status >= 400 && status < 500 ? MICA_EINVAL : MICA_EINTERNAL;
    }
}
