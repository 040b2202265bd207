/* SPDX-License-Identifier: MIT */
/*
 * The runtime tests' coroutine-side EXPECT/EXPECT_EQ (../runtime/helpers.h),
 * with EXPECT_EQ evaluating each argument once: these tests put calls with
 * effects inside it (EXPECT_EQ(mica_redis_incr(r, ctx, key, &n), 0)), which
 * helpers.h's version would run twice.
 */
#ifndef MICA_TEST_STORE_EXPECT_H
#define MICA_TEST_STORE_EXPECT_H

#include "../runtime/helpers.h"

static inline int expect_eq_once(long long a, long long b, const char *file, int line,
                                 const char *text)
{
    return expect_note(a == b, file, line, text, a, b);
}

#undef EXPECT_EQ
#define EXPECT_EQ(a, b)                                                                           \
    expect_eq_once((long long)(a), (long long)(b), __FILE__, __LINE__, #a " == " #b)

#endif
