/* SPDX-License-Identifier: MIT */
/* Lookups over the MICA_ERRNO_MAP table of include/mica/error.h. */
#include "mica/error.h"

const char *mica_strerror(int err)
{
    switch (err) {
#define MSG(name, value, msg)                                                  \
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
#define NAME(name, value, msg)                                                 \
    case value:                                                                \
        return #name;
        MICA_ERRNO_MAP(NAME)
#undef NAME
    default:
        return "UNKNOWN";
    }
}
