/* SPDX-License-Identifier: MIT */
/* mica: everything public, for programs that would rather include one header. */
#ifndef MICA_MICA_H
#define MICA_MICA_H

#include "mica/error.h"
#include "mica/log.h"
#include "mica/runtime.h"
#include "mica/ctx.h"
#include "mica/chan.h"
#include "mica/sync.h"
#include "mica/net.h"
#include "mica/http.h"
#include "mica/resolver.h"
#include "mica/tls.h"

#endif /* MICA_MICA_H */
