// cmd_tokenize.c - `forge tokenize` (placeholder until its module lands; replaced by the module's owner).
#include "cli/cli.h"

#include <stdio.h>

int fg_cmd_tokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "forge tokenize: not built yet\n");
    return 1;
}
