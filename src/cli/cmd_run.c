// cmd_run.c - `forge run` (placeholder until its module lands; replaced by the module's owner).
#include "cli/cli.h"

#include <stdio.h>

int fg_cmd_run(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "forge run: not built yet\n");
    return 1;
}
