/* SPDX-License-Identifier: MIT */
/* The public logger: the stderr format, levels, typed fields, cut lines, sinks and threads. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <regex.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mica/log.h"
#include "helpers.h"

/* ---- capturing stderr ------------------------------------------------------------ */

static int saved_stderr = -1, pipe_rd = -1;

static void capture_begin(void)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    saved_stderr = dup(STDERR_FILENO);
    dup2(p[1], STDERR_FILENO);
    close(p[1]);
    pipe_rd = p[0];
}

/* Restores stderr and returns what was written meanwhile (static buffer). */
static const char *capture_end(void)
{
    static char out[16384];
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    size_t len = 0;
    ssize_t n;
    while (len < sizeof(out) - 1 && (n = read(pipe_rd, out + len, sizeof(out) - 1 - len)) > 0)
        len += (size_t)n;
    out[len] = '\0';
    close(pipe_rd);
    return out;
}

static void assert_matches(const char *text, const char *pattern)
{
    regex_t re;
    assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
    int rc = regexec(&re, text, 0, NULL, 0);
    regfree(&re);
    if (rc != 0)
        fail_msg("%s\ndoes not match\n%s", text, pattern);
}

/* ---- a sink that keeps the last line --------------------------------------------- */

struct last {
    char line[MICA_LOG_LINE_MAX + 1];
    size_t len;
    mica_log_level_t level;
    int calls;
};

static void keep_last(mica_log_level_t level, const char *line, size_t len, void *arg)
{
    struct last *l = arg;
    memcpy(l->line, line, len + 1); /* NUL-terminated */
    l->len = len;
    l->level = level;
    l->calls++;
}

/* ---- tests ------------------------------------------------------------------------ */

/* Runs first: the level is read from the environment on first use. */
static void test_level_comes_from_mica_log_level_until_set(void **state)
{
    setenv("MICA_LOG_LEVEL", "WARN", 1);
    assert_int_equal(mica_log_level(), MICA_LOG_WARN);
    assert_false(mica_log_enabled(MICA_LOG_INFO));
    assert_true(mica_log_enabled(MICA_LOG_ERROR));
    mica_log_set_level(MICA_LOG_DEBUG);
    assert_int_equal(mica_log_level(), MICA_LOG_DEBUG);
    mica_log_level_t l;
    assert_int_equal(mica_log_parse_level("warning", &l), 0);
    assert_int_equal(l, MICA_LOG_WARN);
    assert_int_equal(mica_log_parse_level("loud", &l), MICA_EINVAL);
    assert_string_equal(mica_log_level_name(MICA_LOG_ERROR), "error");
}

static void test_stderr_lines_keep_the_json_lines_format(void **state)
{
    mica_log_set_level(MICA_LOG_INFO);
    capture_begin();
    mica_log_info("listening", "addr", "127.0.0.1:8080", "tls", "no");
    mica_log_debug("not shown");
    mica_log(MICA_LOG_ERROR, "bare", (const char *)0);
    const char *out = capture_end();
    /* The exact bytes of the format the integration tests parse. */
    assert_matches(out, "^\\{\"ts\":\"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
                        "\\.[0-9]{3}Z\",\"level\":\"info\",\"msg\":\"listening\","
                        "\"addr\":\"127\\.0\\.0\\.1:8080\","
                        "\"tls\":\"no\"\\}\n"
                        "\\{\"ts\":\"[^\"]+\",\"level\":\"error\",\"msg\":\"bare\"\\}\n$");
}

static void test_strings_are_escaped_and_utf8_kept(void **state)
{
    struct last l = {0};
    mica_log_set_sink(keep_last, &l);
    mica_log_warn("q\"b\\s\n\x01", "k\tey", "caf\xc3\xa9", "nul", NULL);
    mica_log_set_sink(NULL, NULL);
    assert_int_equal(l.level, MICA_LOG_WARN);
    assert_int_equal(strlen(l.line), l.len);
    /* Control characters as \u00XX (the format's, kept byte for byte). */
    assert_non_null(strstr(l.line, "\"msg\":\"q\\\"b\\\\s\\u000a\\u0001\",\"k\\u0009ey\":"
                                    "\"caf\xc3\xa9\",\"nul\":\"\"}"));
}

static void test_typed_fields_are_json_numbers_booleans_and_null(void **state)
{
    struct last l = {0};
    mica_log_set_sink(keep_last, &l);
    mica_log_fields(MICA_LOG_INFO, "call",
                    (mica_log_field_t[]){MICA_LOG_STR("method", "GetUser"),
                                         MICA_LOG_INT("status", -4),
                                         MICA_LOG_INT("big", INT64_MAX),
                                         MICA_LOG_FLOAT("ms", 0.1), MICA_LOG_FLOAT("nan", NAN),
                                         MICA_LOG_BOOL("ok", true)},
                    6);
    mica_log_set_sink(NULL, NULL);
    assert_non_null(strstr(l.line, "\"method\":\"GetUser\",\"status\":-4,"
                                    "\"big\":9223372036854775807,\"ms\":0.1,\"nan\":null,"
                                    "\"ok\":true}"));
    json_error_t err;
    json_t *j = json_loads(l.line, 0, &err);
    assert_non_null(j);
    assert_true(json_is_integer(json_object_get(j, "status")));
    assert_true(json_is_real(json_object_get(j, "ms")));
    json_decref(j);
}

static void test_a_long_line_is_cut_to_valid_json_that_says_so(void **state)
{
    static char big[6000];
    struct last l = {0};
    mica_log_set_sink(keep_last, &l);
    /* ASCII, then two-byte characters after 0 or 1 ASCII byte, so that the
     * cut falls on either byte of a character: it never splits one. */
    for (int fill = 0; fill < 3; fill++) {
        memset(big, 'x', sizeof(big) - 1);
        if (fill > 0)
            for (size_t i = (size_t)fill - 1; i + 2 < sizeof(big); i += 2)
                big[i] = '\xc3', big[i + 1] = '\xa9';
        big[sizeof(big) - 1] = '\0';
        for (int shift = 0; shift < 2; shift++) {
            /* shift 1: the message is short, the cut falls in the field's value */
            mica_log_info(shift ? "m" : big, "a", big, "after", "never");
            assert_true(l.len <= MICA_LOG_LINE_MAX);
            json_error_t err;
            json_t *j = json_loads(l.line, 0, &err);
            if (!j)
                fail_msg("not JSON (%s): ...%s", err.text, l.line + l.len - 40);
            assert_true(json_is_true(json_object_get(j, "truncated")));
            assert_null(json_object_get(j, "after"));
            json_decref(j);
        }
    }
    mica_log_set_sink(NULL, NULL);
}

/* ---- many threads log while the sink is swapped ------------------------------------ */

#define THREADS 4
#define LINES 2000

static atomic_long counted[2];
static atomic_int bad_lines;

static void count_sink(mica_log_level_t level, const char *line, size_t len, void *arg)
{
    atomic_long *c = arg;
    if (level != MICA_LOG_INFO || strlen(line) != len || line[0] != '{' || line[len - 1] != '}')
        atomic_fetch_add(&bad_lines, 1);
    atomic_fetch_add(c, 1);
}

static void *log_lines(void *arg)
{
    char id[16];
    snprintf(id, sizeof(id), "%d", (int)(intptr_t)arg);
    for (int i = 0; i < LINES; i++)
        mica_log_info("line", "thread", id);
    return NULL;
}

static void test_threads_log_whole_lines_while_the_sink_changes(void **state)
{
    mica_log_set_sink(count_sink, &counted[0]);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, log_lines, (void *)(intptr_t)i), 0);
    for (int i = 0; i < 200; i++)
        mica_log_set_sink(count_sink, &counted[i % 2]);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    mica_log_set_sink(NULL, NULL);
    assert_int_equal(atomic_load(&bad_lines), 0);
    assert_int_equal(atomic_load(&counted[0]) + atomic_load(&counted[1]), THREADS * LINES);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_level_comes_from_mica_log_level_until_set),
        cmocka_unit_test(test_stderr_lines_keep_the_json_lines_format),
        cmocka_unit_test(test_strings_are_escaped_and_utf8_kept),
        cmocka_unit_test(test_typed_fields_are_json_numbers_booleans_and_null),
        cmocka_unit_test(test_a_long_line_is_cut_to_valid_json_that_says_so),
        cmocka_unit_test(test_threads_log_whole_lines_while_the_sink_changes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
