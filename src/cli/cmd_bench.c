// cmd_bench.c - `forge bench` (placeholder until its module lands; replaced by the module's owner).
#include "cli/cli.h"

#include <stdio.h>

int fg_cmd_bench(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "forge bench: not built yet\n");
    return 1;
}
