// cli_sampling.c - the sampling flags that `forge run` and `forge chat` share (--temp, --top-k,
// --top-p, --min-p, --repeat-penalty, --seed), parsed into an fg_sampling, and their help text.
// Not here: the other flags of each command. Called by cmd_run.c and cmd_chat.c.
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

int fg_cli_sampling_flag(const char *cmd, int argc, char **argv, int *i, fg_sampling *s,
                         bool *seed_set) {
    static const char *const k_flags[] = {"--temp",           "--top-k", "--top-p", "--min-p",
                                          "--repeat-penalty", "--seed"};
    const char *f = argv[*i];
    bool known = false;
    for (size_t k = 0; k < sizeof k_flags / sizeof k_flags[0]; k++)
        known = known || !strcmp(f, k_flags[k]);
    if (!known)
        return 0;
    const char *val = fg_cli_value(cmd, argc, argv, i);
    if (!val)
        return -1;
    double d = 0;
    int64_t v = 0;
    if (!strcmp(f, "--temp")) {
        if (!fg_cli_parse_f64(cmd, f, val, 0, 100, &d))
            return -1;
        s->temperature = (float)d;
    } else if (!strcmp(f, "--top-k")) {
        if (!fg_cli_parse_i64(cmd, f, val, 0, INT32_MAX, &v))
            return -1;
        s->top_k = (int32_t)v;
    } else if (!strcmp(f, "--top-p")) {
        if (!fg_cli_parse_f64(cmd, f, val, 0, 1, &d))
            return -1;
        s->top_p = (float)d;
    } else if (!strcmp(f, "--min-p")) {
        if (!fg_cli_parse_f64(cmd, f, val, 0, 1, &d))
            return -1;
        s->min_p = (float)d;
    } else if (!strcmp(f, "--repeat-penalty")) {
        if (!fg_cli_parse_f64(cmd, f, val, 0.01, 100, &d))
            return -1;
        s->repeat_penalty = (float)d;
    } else { // --seed
        if (!fg_cli_parse_i64(cmd, f, val, 0, INT64_MAX, &v))
            return -1;
        s->seed = (uint64_t)v;
        *seed_set = true;
    }
    return 1;
}
