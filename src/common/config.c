/* SPDX-License-Identifier: MIT */
/*
 * Settings from flags, MICA_* variables and a JSON file (include/mica/config.h).
 * Each setting's text is taken from the first source that has it, then
 * parsed once by the same code whatever the source, so "5s" means the same
 * on the command line, in the environment and in the file.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/alloc.h"
#include "common/log.h"
#include "mica/config.h"

struct mica_config {
    const mica_setting_t *settings;
    size_t n;
    const char **source; /* per setting */
    char **args;         /* positional arguments (borrowed from argv) */
    size_t nargs;
    char **strs; /* copies handed out to STR settings */
    size_t nstrs, strs_cap;
};

/* ---- parsing ---------------------------------------------------------------- */

static int parse_i64(const char *t, int64_t *v)
{
    if (!*t || isspace((unsigned char)*t))
        return MICA_EINVAL;
    char *end;
    errno = 0;
    long long x = strtoll(t, &end, 10);
    if (errno || *end)
        return MICA_EINVAL;
    *v = x;
    return 0;
}

/* A number with an optional unit suffix from `units` (name, multiplier). */
struct unit {
    const char *name;
    int64_t mult;
};

static int parse_units(const char *t, const struct unit *units, int64_t *v)
{
    if (!*t || !isdigit((unsigned char)*t))
        return MICA_EINVAL;
    char *end;
    errno = 0;
    long long x = strtoll(t, &end, 10);
    if (errno)
        return MICA_EINVAL;
    if (!*end) {
        *v = x;
        return 0;
    }
    for (const struct unit *u = units; u->name; u++) {
        if (strcmp(end, u->name) == 0) {
            if (x > INT64_MAX / u->mult)
                return MICA_EINVAL;
            *v = x * u->mult;
            return 0;
        }
    }
    return MICA_EINVAL;
}

static const struct unit size_units[] = {
    {"B", 1},
    {"KiB", 1024}, {"MiB", 1024 * 1024}, {"GiB", 1024 * 1024 * 1024},
    {"k", 1000}, {"K", 1000}, {"KB", 1000}, {"M", 1000000}, {"MB", 1000000},
    {"G", 1000000000}, {"GB", 1000000000},
    {NULL, 0},
};

static const struct unit ms_units[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {NULL, 0},
};

static int parse_bool(const char *t, bool *b)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(t, yes[i]) == 0) {
            *b = true;
            return 0;
        }
        if (strcasecmp(t, no[i]) == 0) {
            *b = false;
            return 0;
        }
    }
    return MICA_EINVAL;
}

static int in_range(int64_t v, int64_t min, int64_t max, int64_t tmin, int64_t tmax)
{
    if (min || max) {
        tmin = min > tmin ? min : tmin;
        tmax = max < tmax ? max : tmax;
    }
    return v >= tmin && v <= tmax ? 0 : MICA_EINVAL;
}

int mica_config_parse(mica_setting_type_t type, const char *text, int64_t min, int64_t max,
                      void *out)
{
    int64_t v;
    bool b;
    if (!text || !out)
        return MICA_EINVAL;
    switch (type) {
    case MICA_SETTING_STR:
        *(const char **)out = text;
        return 0;
    case MICA_SETTING_BOOL:
        if (parse_bool(text, &b) != 0)
            return MICA_EINVAL;
        *(bool *)out = b;
        return 0;
    case MICA_SETTING_INT:
        if (parse_i64(text, &v) != 0 || in_range(v, min, max, INT_MIN, INT_MAX) != 0)
            return MICA_EINVAL;
        *(int *)out = (int)v;
        return 0;
    case MICA_SETTING_I64:
        if (parse_i64(text, &v) != 0 || in_range(v, min, max, INT64_MIN, INT64_MAX) != 0)
            return MICA_EINVAL;
        *(int64_t *)out = v;
        return 0;
    case MICA_SETTING_SIZE:
        if (parse_units(text, size_units, &v) != 0 || in_range(v, min, max, 0, INT64_MAX) != 0)
            return MICA_EINVAL;
        *(size_t *)out = (size_t)v;
        return 0;
    case MICA_SETTING_COUNT:
        if (parse_i64(text, &v) != 0 || in_range(v, min, max, 0, INT64_MAX) != 0)
            return MICA_EINVAL;
        *(size_t *)out = (size_t)v;
        return 0;
    case MICA_SETTING_MS:
        if (parse_units(text, ms_units, &v) != 0 || in_range(v, min, max, 0, INT_MAX) != 0)
            return MICA_EINVAL;
        *(int *)out = (int)v;
        return 0;
    }
    return MICA_EINVAL;
}

/* ---- names ---------------------------------------------------------------------- */

/* MICA_<NAME> (or the setting's own variable) into buf. */
static const char *env_name(const mica_setting_t *s, char *buf, size_t size)
{
    if (s->env)
        return s->env;
    size_t k = 0;
    for (const char *p = "MICA_"; *p && k + 1 < size; p++)
        buf[k++] = *p;
    for (const char *p = s->name; *p && k + 1 < size; p++)
        buf[k++] = (char)toupper((unsigned char)*p);
    buf[k] = '\0';
    return buf;
}

/* Whether flag text `f` (after "--", up to `len`) names setting `name` ('-' == '_'). */
static bool flag_is(const char *f, size_t len, const char *name)
{
    size_t i = 0;
    for (; i < len && name[i]; i++)
        if (f[i] != name[i] && !(f[i] == '-' && name[i] == '_'))
            return false;
    return i == len && !name[i];
}

static const char *type_hint(mica_setting_type_t t)
{
    switch (t) {
    case MICA_SETTING_STR: return "string";
    case MICA_SETTING_BOOL: return "bool";
    case MICA_SETTING_INT:
    case MICA_SETTING_I64: return "integer";
    case MICA_SETTING_SIZE: return "bytes (e.g. 65536, 64KiB, 4MiB)";
    case MICA_SETTING_COUNT: return "count";
    case MICA_SETTING_MS: return "duration (e.g. 250ms, 5s, 2m)";
    }
    return "value";
}

void mica_config_usage(FILE *f, const char *prog, const mica_setting_t *settings, size_t n)
{
    fprintf(f, "usage: %s [flags] [args]\n\nFlags (flag > environment > --config file > default):\n",
            prog ? prog : "program");
    char env[128];
    for (size_t i = 0; i < n; i++) {
        const mica_setting_t *s = &settings[i];
        fprintf(f, "  --");
        for (const char *p = s->name; *p; p++)
            fputc(*p == '_' ? '-' : *p, f);
        fprintf(f, " <%s>\n      %s\n      env %s", type_hint(s->type), s->help ? s->help : "",
                env_name(s, env, sizeof(env)));
        if (s->def)
            fprintf(f, ", default \"%s\"", s->def);
        if (s->min || s->max)
            fprintf(f, ", range [%" PRId64 ", %" PRId64 "]", s->min, s->max);
        fputc('\n', f);
    }
    fprintf(f, "  --config <file>\n      JSON object of settings by name, env MICA_CONFIG\n"
               "  --help\n      this text\n");
}

/* ---- loading --------------------------------------------------------------------- */

static char *keep(mica_config_t *cfg, const char *s, size_t len)
{
    if (cfg->nstrs == cfg->strs_cap) {
        size_t cap = cfg->strs_cap ? cfg->strs_cap * 2 : 8;
        char **v = mica__realloc(cfg->strs, cap * sizeof(*v));
        if (!v)
            return NULL;
        cfg->strs = v;
        cfg->strs_cap = cap;
    }
    char *d = mica__strndup(s, len);
    if (d)
        cfg->strs[cfg->nstrs++] = d;
    return d;
}

static int bad(const char *prog, const mica_setting_t *s, const char *where, const char *text)
{
    fprintf(stderr, "%s: invalid %s for %s (from %s): \"%s\"", prog, type_hint(s->type), s->name,
            where, text);
    if (s->min || s->max)
        fprintf(stderr, ", want [%" PRId64 ", %" PRId64 "]", s->min, s->max);
    fputc('\n', stderr);
    return MICA_EINVAL;
}

/* The file's value of key `name` as text kept by cfg; NULL if absent. *err on a bad type. */
static const char *file_text(mica_config_t *cfg, json_t *v, int *err)
{
    char num[32];
    if (json_is_string(v))
        return keep(cfg, json_string_value(v), json_string_length(v));
    if (json_is_integer(v)) {
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return keep(cfg, num, strlen(num));
    }
    if (json_is_boolean(v))
        return json_is_true(v) ? "true" : "false";
    *err = MICA_EINVAL;
    return NULL;
}

static json_t *load_file(const char *prog, const char *path, int *err)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        fprintf(stderr, "%s: config file %s: %s (line %d)\n", prog, path, je.text, je.line);
        *err = MICA_EINVAL;
        return NULL;
    }
    if (!json_is_object(root)) {
        fprintf(stderr, "%s: config file %s: not a JSON object\n", prog, path);
        json_decref(root);
        *err = MICA_EINVAL;
        return NULL;
    }
    return root;
}

int mica_config_load(mica_config_t **out, const mica_setting_t *settings, size_t n, int argc,
                     char **argv)
{
    if (!out || (n && !settings))
        return MICA_EINVAL;
    *out = NULL;
    const char *prog = argc > 0 && argv[0] ? argv[0] : "mica";
    const char *slash = strrchr(prog, '/');
    prog = slash ? slash + 1 : prog;
    mica_config_t *cfg = mica__calloc(1, sizeof(*cfg));
    if (!cfg)
        return MICA_ENOMEM;
    cfg->settings = settings;
    cfg->n = n;
    cfg->source = mica__calloc(n ? n : 1, sizeof(*cfg->source));
    cfg->args = mica__calloc(argc > 0 ? (size_t)argc : 1, sizeof(*cfg->args));
    const char **flag = mica__calloc(n ? n : 1, sizeof(*flag));
    json_t *file = NULL;
    int rc = cfg->source && cfg->args && flag ? 0 : MICA_ENOMEM;

    /* Flags: the last occurrence of each wins. */
    const char *config_path = getenv("MICA_CONFIG");
    bool rest = false;
    for (int i = 1; rc == 0 && i < argc; i++) {
        char *a = argv[i];
        if (rest || a[0] != '-' || !a[1]) {
            cfg->args[cfg->nargs++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            rest = true;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 || strcmp(a, "-help") == 0) {
            mica_config_usage(stdout, prog, settings, n);
            rc = MICA_CONFIG_HELP;
            break;
        }
        const char *f = a + (a[1] == '-' ? 2 : 1); /* --name or -name, as Go's flag */
        const char *eq = strchr(f, '=');
        size_t len = eq ? (size_t)(eq - f) : strlen(f);
        const char *val = eq ? eq + 1 : NULL;
        if (flag_is(f, len, "config")) {
            if (!val && i + 1 < argc)
                val = argv[++i];
            if (!val) {
                fprintf(stderr, "%s: --config needs a file\n", prog);
                rc = MICA_EINVAL;
            }
            config_path = val;
            continue;
        }
        size_t k = 0;
        bool negated = false;
        for (; k < n; k++)
            if (flag_is(f, len, settings[k].name))
                break;
        if (k == n && len > 3 && strncmp(f, "no-", 3) == 0) { /* --no-name for booleans */
            for (k = 0; k < n; k++)
                if (settings[k].type == MICA_SETTING_BOOL && flag_is(f + 3, len - 3, settings[k].name))
                    break;
            negated = k < n;
        }
        if (k == n) {
            fprintf(stderr, "%s: unknown flag %.*s (see --help)\n", prog, (int)(len + (size_t)(f - a)), a);
            rc = MICA_EINVAL;
            break;
        }
        if (negated) {
            val = val ? NULL : "false";
            if (!val) {
                fprintf(stderr, "%s: %s takes no value\n", prog, a);
                rc = MICA_EINVAL;
                break;
            }
        } else if (!val && settings[k].type == MICA_SETTING_BOOL) {
            val = "true";
        } else if (!val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: flag %s needs a value\n", prog, a);
                rc = MICA_EINVAL;
                break;
            }
            val = argv[++i];
        }
        flag[k] = val;
    }
    if (rc == 0 && config_path && *config_path)
        file = load_file(prog, config_path, &rc);
    if (rc == 0 && file) { /* unknown keys are typos: refuse them as unknown flags are */
        const char *key;
        json_t *v;
        json_object_foreach(file, key, v) {
            size_t k = 0;
            while (k < n && strcmp(settings[k].name, key) != 0)
                k++;
            if (k == n) {
                fprintf(stderr, "%s: config file %s: unknown setting \"%s\"\n", prog, config_path, key);
                rc = MICA_EINVAL;
            }
        }
    }

    char env[128];
    for (size_t k = 0; rc == 0 && k < n; k++) {
        const mica_setting_t *s = &settings[k];
        const char *text = flag[k], *src = "flag", *where = NULL;
        char where_buf[160];
        if (text) {
            snprintf(where_buf, sizeof(where_buf), "flag --%s", s->name);
        } else if ((text = getenv(env_name(s, env, sizeof(env)))) && *text) {
            src = "env";
            snprintf(where_buf, sizeof(where_buf), "%s", env_name(s, env, sizeof(env)));
        } else if (file && json_object_get(file, s->name)) {
            src = "file";
            text = file_text(cfg, json_object_get(file, s->name), &rc);
            snprintf(where_buf, sizeof(where_buf), "%s", config_path);
            if (rc != 0) {
                fprintf(stderr, "%s: config file %s: %s must be a string, integer or boolean\n",
                        prog, config_path, s->name);
                break;
            }
            if (!text) {
                rc = MICA_ENOMEM;
                break;
            }
        } else {
            src = "default";
            text = s->def;
            snprintf(where_buf, sizeof(where_buf), "its default");
        }
        where = where_buf;
        if (!text)
            continue; /* no default: out keeps what the caller put there */
        if (s->type == MICA_SETTING_STR && strcmp(src, "file") != 0 && strcmp(src, "default") != 0) {
            if (!(text = keep(cfg, text, strlen(text)))) {
                rc = MICA_ENOMEM;
                break;
            }
        }
        if (mica_config_parse(s->type, text, s->min, s->max, s->out) != 0) {
            rc = bad(prog, s, where, text);
            break;
        }
        cfg->source[k] = src;
    }
    json_decref(file);
    mica__free(flag);
    if (rc != 0) {
        mica_config_free(cfg);
        return rc;
    }
    *out = cfg;
    return 0;
}

size_t mica_config_nargs(const mica_config_t *cfg)
{
    return cfg ? cfg->nargs : 0;
}

const char *mica_config_arg(const mica_config_t *cfg, size_t i)
{
    return cfg && i < cfg->nargs ? cfg->args[i] : NULL;
}

const char *mica_config_source(const mica_config_t *cfg, const char *name)
{
    if (!cfg || !name)
        return NULL;
    for (size_t k = 0; k < cfg->n; k++)
        if (strcmp(cfg->settings[k].name, name) == 0)
            return cfg->source[k];
    return NULL;
}

void mica_config_free(mica_config_t *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->nstrs; i++)
        mica__free(cfg->strs[i]);
    mica__free(cfg->strs);
    mica__free(cfg->source);
    mica__free(cfg->args);
    mica__free(cfg);
}

int mica_config_from_env(const mica_setting_t *settings, size_t n)
{
    char env[128];
    int rc = 0;
    for (size_t k = 0; k < n; k++) {
        const mica_setting_t *s = &settings[k];
        const char *name = env_name(s, env, sizeof(env));
        const char *text = getenv(name);
        if (!text || !*text)
            continue;
        if (mica_config_parse(s->type, text, s->min, s->max, s->out) != 0) {
            mica__log_error("invalid environment variable", "name", name, "value", text, "want",
                            type_hint(s->type));
            rc = MICA_EINVAL;
        }
    }
    return rc;
}
