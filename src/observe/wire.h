/* SPDX-License-Identifier: MIT */
/*
 * Protobuf wire-format writing for OTLP (src/observe/otlp_trace.proto):
 * varints, tags, length-delimited and fixed fields, and the KeyValue
 * message that attributes become. Span records keep their attributes
 * already encoded (trace.c), the exporter frames them (trace_otlp.c);
 * tests/unit/observe/test_otlp.c holds the bytes to what protoc-c makes of
 * the same .proto.
 */
#ifndef MICA_OBSERVE_WIRE_H
#define MICA_OBSERVE_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "mica/log.h"

enum { MICA__WT_VARINT = 0, MICA__WT_FIXED64 = 1, MICA__WT_LEN = 2, MICA__WT_FIXED32 = 5 };
#define MICA__TAG(field, wt) ((uint32_t)(field) << 3 | (wt))

/* Field numbers of otlp_trace.proto. */
enum {
    MICA__ANY_STRING = 1,
    MICA__ANY_BOOL = 2,
    MICA__ANY_INT = 3,
    MICA__ANY_DOUBLE = 4,
    MICA__KV_KEY = 1,
    MICA__KV_VALUE = 2,
    MICA__SCOPE_NAME = 1,
    MICA__SCOPE_VERSION = 2,
    MICA__RES_ATTRS = 1,
    MICA__STATUS_MESSAGE = 2,
    MICA__STATUS_CODE = 3,
    MICA__EV_TIME = 1,
    MICA__EV_NAME = 2,
    MICA__EV_ATTRS = 3,
    MICA__SPAN_TRACE_ID = 1,
    MICA__SPAN_SPAN_ID = 2,
    MICA__SPAN_TRACE_STATE = 3,
    MICA__SPAN_PARENT = 4,
    MICA__SPAN_NAME = 5,
    MICA__SPAN_KIND = 6,
    MICA__SPAN_START = 7,
    MICA__SPAN_END = 8,
    MICA__SPAN_ATTRS = 9,
    MICA__SPAN_DROPPED_ATTRS = 10,
    MICA__SPAN_EVENTS = 11,
    MICA__SPAN_DROPPED_EVENTS = 12,
    MICA__SPAN_STATUS = 15,
    MICA__SPAN_FLAGS = 16,
    MICA__SS_SCOPE = 1,
    MICA__SS_SPANS = 2,
    MICA__RS_RESOURCE = 1,
    MICA__RS_SCOPE_SPANS = 2,
    MICA__REQ_RESOURCE_SPANS = 1,
};

static inline size_t mica__vsize(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline uint8_t *mica__varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* A length-delimited field of `n` bytes, its tag and length included. */
static inline size_t mica__lenf(uint32_t field, size_t n)
{
    return mica__vsize(MICA__TAG(field, MICA__WT_LEN)) + mica__vsize(n) + n;
}

static inline uint8_t *mica__head(uint8_t *p, uint32_t field, size_t n)
{
    return mica__varint(mica__varint(p, MICA__TAG(field, MICA__WT_LEN)), n);
}

static inline uint8_t *mica__bytes(uint8_t *p, uint32_t field, const void *s, size_t n)
{
    p = mica__head(p, field, n);
    memcpy(p, s, n);
    return p + n;
}

static inline uint8_t *mica__fixed(uint8_t *p, uint32_t field, uint64_t v, int n)
{
    p = mica__varint(p, MICA__TAG(field, n == 8 ? MICA__WT_FIXED64 : MICA__WT_FIXED32));
    for (int i = 0; i < n; i++)
        *p++ = (uint8_t)(v >> (8 * i)); /* little-endian */
    return p;
}

static inline uint8_t *mica__uint(uint8_t *p, uint32_t field, uint64_t v)
{
    return mica__varint(mica__varint(p, MICA__TAG(field, MICA__WT_VARINT)), v);
}

/* An attribute value: a typed log field's, strings with their length. */
typedef struct mica__value {
    mica_log_type_t type;
    union {
        int64_t i;
        double f;
        bool b;
        const char *s;
    } v;
    size_t slen;
} mica__value_t;

static inline size_t mica__any_size(const mica__value_t *v)
{
    switch (v->type) {
    case MICA_LOG_T_INT:
        return 1 + mica__vsize((uint64_t)v->v.i);
    case MICA_LOG_T_FLOAT:
        return 9;
    case MICA_LOG_T_BOOL:
        return 2;
    default:
        return mica__lenf(MICA__ANY_STRING, v->slen);
    }
}

/* The size of a KeyValue's body; *any gets its value's. proto3 leaves an empty key out. */
static inline size_t mica__kv_size(size_t klen, const mica__value_t *v, size_t *any)
{
    *any = mica__any_size(v);
    return (klen ? mica__lenf(MICA__KV_KEY, klen) : 0) + mica__lenf(MICA__KV_VALUE, *any);
}

/* Writes a KeyValue of `body` bytes (mica__kv_size) as `field`; *key_at: where the key is. */
static inline uint8_t *mica__put_kv(uint8_t *p, uint32_t field, const char *key, size_t klen,
                                    const mica__value_t *v, size_t any, size_t body,
                                    uint8_t **key_at)
{
    p = mica__head(p, field, body);
    if (klen)
        p = mica__head(p, MICA__KV_KEY, klen);
    if (key_at)
        *key_at = p;
    memcpy(p, key, klen);
    p = mica__head(p + klen, MICA__KV_VALUE, any);
    switch (v->type) {
    case MICA_LOG_T_INT:
        return mica__uint(p, MICA__ANY_INT, (uint64_t)v->v.i);
    case MICA_LOG_T_FLOAT: {
        uint64_t bits;
        memcpy(&bits, &v->v.f, 8);
        return mica__fixed(p, MICA__ANY_DOUBLE, bits, 8);
    }
    case MICA_LOG_T_BOOL:
        return mica__uint(p, MICA__ANY_BOOL, v->v.b ? 1 : 0);
    default:
        return mica__bytes(p, MICA__ANY_STRING, v->v.s, v->slen);
    }
}

#endif /* MICA_OBSERVE_WIRE_H */
