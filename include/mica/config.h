/* SPDX-License-Identifier: MIT */
/*
 * Settings declared once -- name, type, default, help -- and read from, in
 * order of precedence, command-line flags, then MICA_* environment
 * variables, then an optional JSON file, then the default (12-factor).
 * `--help` lists them all with their defaults and variables.
 *
 *     static const char *listen;
 *     static int workers;
 *     const mica_setting_t settings[] = {
 *         {"listen", MICA_SETTING_STR, ":8080", "listen addresses", &listen},
 *         {"workers", MICA_SETTING_INT, "0", "worker threads (0: one per CPU)", &workers, 0, 1024},
 *     };
 *     mica_config_t *cfg;
 *     int rc = mica_config_load(&cfg, settings, 2, argc, argv);
 *     if (rc != 0)                       // MICA_CONFIG_HELP: --help was printed
 *         return rc == MICA_CONFIG_HELP ? 0 : 2;
 *
 * A setting named "http_max_body_bytes" is the flag --http-max-body-bytes
 * (also --http_max_body_bytes), the variable MICA_HTTP_MAX_BODY_BYTES and
 * the file's key "http_max_body_bytes". The file is named by --config or
 * MICA_CONFIG: one JSON object; unknown keys are errors, as unknown flags are.
 */
#ifndef MICA_CONFIG_H
#define MICA_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "mica/error.h"

/* What a setting holds, and the C type its `out` points to. */
typedef enum mica_setting_type {
    MICA_SETTING_STR,   /* const char *: owned by the config (valid until mica_config_free) */
    MICA_SETTING_BOOL,  /* bool: true/false, 1/0, yes/no, on/off; a bare flag is true */
    MICA_SETTING_INT,   /* int, decimal, within [min, max] */
    MICA_SETTING_I64,   /* int64_t, decimal, within [min, max] */
    MICA_SETTING_SIZE,  /* size_t bytes: "1048576", "64KiB", "4MiB", "1GiB" (k/M/G = 1000s) */
    MICA_SETTING_COUNT, /* size_t, decimal, within [min, max] */
    MICA_SETTING_MS,    /* int milliseconds: "250" or "250ms", "5s", "2m", "1h" */
} mica_setting_type_t;

/* One setting. min == max == 0 means no bounds beyond the type's. */
typedef struct mica_setting {
    const char *name; /* lower-case letters, digits and '_' ("http_max_body_bytes") */
    mica_setting_type_t type;
    const char *def;  /* default, as text parsed like any source; NULL: none (STR: NULL) */
    const char *help; /* one line for --help */
    void *out;        /* where the value goes (see the type) */
    int64_t min, max;
    const char *env;  /* variable to read instead of MICA_<NAME> ("PORT"), or NULL */
} mica_setting_t;

typedef struct mica_config mica_config_t;

/* mica_config_load()'s result when --help or -h printed the settings: exit 0. */
#define MICA_CONFIG_HELP 1

/**
 * Reads `n` settings (borrowed for the config's life) from argv, the
 * environment and the JSON file named by --config/MICA_CONFIG, writing each
 * value to its `out`. Arguments that are not flags (and all after "--") are
 * kept as positional (mica_config_arg). Returns 0, MICA_CONFIG_HELP, or
 * MICA_EINVAL after printing what was wrong to stderr; MICA_ENOMEM.
 * *out (may be NULL if no strings or positional args are needed) owns them.
 */
MICA_API int mica_config_load(mica_config_t **out, const mica_setting_t *settings, size_t n,
                              int argc, char **argv);

/** Returns the number of positional arguments, or 0 for a NULL config. */
MICA_API size_t mica_config_nargs(const mica_config_t *cfg);

/** Returns positional argument `i`, or NULL past the end. Owned by the config. */
MICA_API const char *mica_config_arg(const mica_config_t *cfg, size_t i);

/** Returns where setting `name` came from: "flag", "env", "file", "default" or NULL (unset/unknown). */
MICA_API const char *mica_config_source(const mica_config_t *cfg, const char *name);

/** Frees the config and every string it handed out. NULL is a no-op. */
MICA_API void mica_config_free(mica_config_t *cfg);

/** Writes the --help text for `settings` to `f`: each flag, variable, default and help. */
MICA_API void mica_config_usage(FILE *f, const char *prog, const mica_setting_t *settings, size_t n);

/**
 * Reads only the environment for `n` settings (library option structs use
 * this: a value is written only where the variable is set). Returns 0 or
 * MICA_EINVAL, logging the bad variable.
 */
MICA_API int mica_config_from_env(const mica_setting_t *settings, size_t n);

/**
 * Parses `text` as a value of `type` into `out` (the type's C type), with
 * [min, max] as in mica_setting_t. Returns 0 or MICA_EINVAL.
 */
MICA_API int mica_config_parse(mica_setting_type_t type, const char *text, int64_t min, int64_t max,
                               void *out);

#endif /* MICA_CONFIG_H */
