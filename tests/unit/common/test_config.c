/* SPDX-License-Identifier: MIT */
/* Settings from flags, environment and a JSON file, in that precedence. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mica/config.h"

static const char *listen_addr;
static int workers, timeout_ms;
static size_t body;
static bool verbose;
static int64_t big;

static const mica_setting_t settings[] = {
    {"listen", MICA_SETTING_STR, ":8080", "listen addresses", &listen_addr, 0, 0, NULL},
    {"workers", MICA_SETTING_INT, "0", "worker threads", &workers, 0, 64, NULL},
    {"http_body_timeout", MICA_SETTING_MS, "5s", "body timeout", &timeout_ms, 0, 0, NULL},
    {"http_max_body_bytes", MICA_SETTING_SIZE, "1MiB", "body limit", &body, 1, 1 << 30, NULL},
    {"verbose", MICA_SETTING_BOOL, "false", "more logs", &verbose, 0, 0, NULL},
    {"big", MICA_SETTING_I64, NULL, "no default", &big, 0, 0, "TEST_BIG"},
};
#define N (sizeof(settings) / sizeof(settings[0]))

static void clear_env(void)
{
    unsetenv("MICA_LISTEN");
    unsetenv("MICA_WORKERS");
    unsetenv("MICA_HTTP_BODY_TIMEOUT");
    unsetenv("MICA_HTTP_MAX_BODY_BYTES");
    unsetenv("MICA_VERBOSE");
    unsetenv("MICA_CONFIG");
    unsetenv("TEST_BIG");
    big = -1;
}

static int load(mica_config_t **cfg, int argc, const char **argv)
{
    return mica_config_load(cfg, settings, N, argc, (char **)argv);
}

static void test_defaults_apply_when_nothing_is_set(void **state)
{
    clear_env();
    mica_config_t *cfg;
    const char *argv[] = {"prog"};
    assert_int_equal(load(&cfg, 1, argv), 0);
    assert_string_equal(listen_addr, ":8080");
    assert_int_equal(workers, 0);
    assert_int_equal(timeout_ms, 5000);
    assert_int_equal(body, 1 << 20);
    assert_false(verbose);
    assert_int_equal(big, -1); /* no default: left alone */
    assert_string_equal(mica_config_source(cfg, "listen"), "default");
    assert_null(mica_config_source(cfg, "big"));
    mica_config_free(cfg);
}

static void test_flag_beats_env_beats_file(void **state)
{
    clear_env();
    char path[] = "/tmp/mica-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *json = "{\"listen\": \"file:1\", \"workers\": 3, \"http_max_body_bytes\": \"64KiB\","
                       " \"verbose\": true, \"http_body_timeout\": \"2m\"}";
    assert_int_equal(write(fd, json, strlen(json)), (ssize_t)strlen(json));
    close(fd);
    setenv("MICA_WORKERS", "5", 1);
    setenv("MICA_LISTEN", "env:1", 1);
    setenv("TEST_BIG", "123456789012", 1);
    mica_config_t *cfg;
    const char *argv[] = {"prog", "serve", "--listen", "flag:1", "--config", path, "extra", "--no-verbose"};
    assert_int_equal(load(&cfg, 8, argv), 0);
    assert_string_equal(listen_addr, "flag:1");
    assert_int_equal(workers, 5);
    assert_int_equal(body, 64 * 1024);
    assert_int_equal(timeout_ms, 120000);
    assert_false(verbose);
    assert_int_equal(big, 123456789012LL);
    assert_string_equal(mica_config_source(cfg, "listen"), "flag");
    assert_string_equal(mica_config_source(cfg, "workers"), "env");
    assert_string_equal(mica_config_source(cfg, "http_max_body_bytes"), "file");
    assert_int_equal(mica_config_nargs(cfg), 2);
    assert_string_equal(mica_config_arg(cfg, 0), "serve");
    assert_string_equal(mica_config_arg(cfg, 1), "extra");
    assert_null(mica_config_arg(cfg, 2));
    mica_config_free(cfg);
    /* The file through MICA_CONFIG, and --name=value with dashes or underscores. */
    clear_env();
    setenv("MICA_CONFIG", path, 1);
    const char *argv2[] = {"prog", "--http-body-timeout=250ms", "--http_max_body_bytes=2M", "--verbose"};
    assert_int_equal(load(&cfg, 4, argv2), 0);
    assert_string_equal(listen_addr, "file:1");
    assert_int_equal(timeout_ms, 250);
    assert_int_equal(body, 2000000);
    assert_true(verbose);
    mica_config_free(cfg);
    unlink(path);
    clear_env();
}

static void test_bad_input_is_refused_with_einval(void **state)
{
    clear_env();
    mica_config_t *cfg = (mica_config_t *)1;
    const char *unknown[] = {"prog", "--wrokers", "2"};
    assert_int_equal(load(&cfg, 3, unknown), MICA_EINVAL);
    assert_null(cfg);
    const char *range[] = {"prog", "--workers", "65"};
    assert_int_equal(load(&cfg, 3, range), MICA_EINVAL);
    const char *notnum[] = {"prog", "--workers=two"};
    assert_int_equal(load(&cfg, 2, notnum), MICA_EINVAL);
    const char *unit[] = {"prog", "--http-body-timeout=5 s"};
    assert_int_equal(load(&cfg, 2, unit), MICA_EINVAL);
    const char *missing[] = {"prog", "--listen"};
    assert_int_equal(load(&cfg, 2, missing), MICA_EINVAL);
    const char *nofile[] = {"prog", "--config", "/nonexistent/mica.json"};
    assert_int_equal(load(&cfg, 3, nofile), MICA_EINVAL);
    setenv("MICA_HTTP_MAX_BODY_BYTES", "0", 1); /* below min 1 */
    const char *plain[] = {"prog"};
    assert_int_equal(load(&cfg, 1, plain), MICA_EINVAL);
    clear_env();
    char path[] = "/tmp/mica-config-XXXXXX";
    int fd = mkstemp(path);
    const char *typo = "{\"listn\": \"x\"}";
    assert_int_equal(write(fd, typo, strlen(typo)), (ssize_t)strlen(typo));
    close(fd);
    const char *withfile[] = {"prog", "--config", path};
    assert_int_equal(load(&cfg, 3, withfile), MICA_EINVAL);
    unlink(path);
}

static void test_help_lists_every_setting(void **state)
{
    clear_env();
    char path[] = "/tmp/mica-help-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w+");
    mica_config_usage(f, "prog", settings, N);
    rewind(f);
    char text[4096];
    size_t len = fread(text, 1, sizeof(text) - 1, f);
    text[len] = '\0';
    fclose(f);
    unlink(path);
    assert_non_null(strstr(text, "--http-max-body-bytes"));
    assert_non_null(strstr(text, "MICA_HTTP_MAX_BODY_BYTES"));
    assert_non_null(strstr(text, "default \"1MiB\""));
    assert_non_null(strstr(text, "TEST_BIG"));
    mica_config_t *cfg;
    const char *argv[] = {"prog", "--help"};
    fflush(stdout);
    assert_int_equal(load(&cfg, 2, argv), MICA_CONFIG_HELP);
}

static void test_env_only_reads_set_variables(void **state)
{
    clear_env();
    workers = 7;
    body = 99;
    setenv("MICA_WORKERS", "9", 1);
    assert_int_equal(mica_config_from_env(settings, N), 0);
    assert_int_equal(workers, 9);
    assert_int_equal(body, 99); /* unset: untouched */
    setenv("MICA_WORKERS", "nine", 1);
    assert_int_equal(mica_config_from_env(settings, N), MICA_EINVAL);
    clear_env();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_apply_when_nothing_is_set),
        cmocka_unit_test(test_flag_beats_env_beats_file),
        cmocka_unit_test(test_bad_input_is_refused_with_einval),
        cmocka_unit_test(test_help_lists_every_setting),
        cmocka_unit_test(test_env_only_reads_set_variables),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
