/* SPDX-License-Identifier: MIT */
/*
 * producer_consumer: the seed's producer-consumer example (chapter 2.2) on mica.
 *
 *     func producer(ch chan<- int) {            // send-only by type
 *         for i := 0; i < 5; i++ { ch <- i }
 *         close(ch)
 *     }
 *     func consumer(ch <-chan int, wg *sync.WaitGroup) {
 *         defer wg.Done()
 *         for val := range ch { fmt.Println("Received:", val) }
 *     }
 *
 * Go ideas ported: an unbuffered channel (make(chan int)), the sender
 * closing it, `for range` over a channel (mica_chan_recv() until
 * MICA_ECLOSED), comma-ok after close, and a sync.WaitGroup the main
 * coroutine waits on. Directional channel types have no C equivalent, so the
 * direction is carried by a one-field wrapper type: a function handed an
 * `int_sender_t` can only send, by convention and by what the type offers.
 *
 * The producer runs on worker 0 and the consumer on worker 1, so every
 * hand-off crosses threads; only the consumer prints, so the output is the
 * same on every run.
 */
#include <stdio.h>

#include "mica/chan.h"
#include "mica/runtime.h"
#include "mica/sync.h"

enum { COUNT = 5 };

/* chan<- int: what a producer may do with the channel. */
typedef struct int_sender {
    mica_chan_t *ch;
} int_sender_t;

/* <-chan int: what a consumer may do with it. */
typedef struct int_receiver {
    mica_chan_t *ch;
} int_receiver_t;

static int send_int(int_sender_t s, int v)
{
    return mica_chan_send(s.ch, NULL, &v);
}

static void close_sender(int_sender_t s)
{
    mica_chan_close(s.ch);
}

static int recv_int(int_receiver_t r, int *v)
{
    return mica_chan_recv(r.ch, NULL, v);
}

struct demo {
    mica_runtime_t *rt;
    int_sender_t out;
    int_receiver_t in;
    mica_wg_t *wg;
    int received;
    int last_rc; /* what ended the consumer's range loop */
    int failed;
};

static void producer(void *arg)
{
    struct demo *d = arg;
    for (int i = 0; i < COUNT; i++) {
        int rc = send_int(d->out, i); /* waits for the consumer: unbuffered */
        if (rc != 0) {
            fprintf(stderr, "producer: send: %s\n", mica_strerror(rc));
            d->failed = 1;
            break;
        }
    }
    close_sender(d->out); /* the sender closes, never the receiver */
}

static void consumer(void *arg)
{
    struct demo *d = arg;
    int v, rc;
    /* for val := range ch */
    while ((rc = recv_int(d->in, &v)) == 0) {
        printf("Received: %d\n", v);
        d->received++;
    }
    d->last_rc = rc;
    mica_wg_done(d->wg); /* defer wg.Done() */
}

static void run(int worker, void *arg)
{
    struct demo *d = arg;
    if (worker != 0)
        return;

    mica_chan_t *ch = NULL;
    int rc = mica_chan_new(&ch, sizeof(int), 0); /* make(chan int) */
    if (rc == 0)
        rc = mica_wg_new(&d->wg);
    if (rc != 0) {
        fprintf(stderr, "producer_consumer: %s\n", mica_strerror(rc));
        d->failed = 1;
        mica_chan_free(ch);
        mica_runtime_stop(d->rt);
        return;
    }
    d->out = (int_sender_t){ch};
    d->in = (int_receiver_t){ch};

    mica_wg_add(d->wg, 1);
    if ((rc = mica_go(producer, d)) != 0 ||
        (rc = mica_go_on(1 % mica_worker_count(), consumer, d)) != 0) {
        fprintf(stderr, "producer_consumer: spawn: %s\n", mica_strerror(rc));
        d->failed = 1;
        mica_runtime_stop(d->rt);
        return;
    }
    mica_wg_wait(d->wg, NULL); /* wg.Wait() */

    /* val, ok := <-ch after close and drain: ok is false, val the zero value. */
    int v = 42;
    rc = mica_chan_recv(ch, NULL, &v);
    printf("consumer done: %d values received, range ended with %s; "
           "<-ch now gives (%d, ok=%s)\n",
           d->received, mica_err_name(d->last_rc), v, rc == 0 ? "true" : "false");

    mica_wg_free(d->wg);
    mica_chan_free(ch);
    mica_runtime_stop(d->rt);
}

int main(void)
{
    struct demo d = {0};
    mica_runtime_opts_t o = {.workers = 2, .no_signals = true};
    int rc = mica_runtime_new(&d.rt, &o);
    if (rc != 0) {
        fprintf(stderr, "producer_consumer: runtime: %s\n", mica_strerror(rc));
        return 1;
    }
    mica_runtime_on_start(d.rt, run, &d);
    rc = mica_runtime_run(d.rt);
    mica_runtime_free(d.rt);
    if (rc != 0)
        fprintf(stderr, "producer_consumer: run: %s\n", mica_strerror(rc));
    return rc != 0 || d.failed || d.received != COUNT || d.last_rc != MICA_ECLOSED;
}
