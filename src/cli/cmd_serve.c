// cmd_serve.c - `forge serve` (placeholder until its module lands; replaced by the module's owner).
#include "cli/cli.h"

#include <stdio.h>

int fg_cmd_serve(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "forge serve: not built yet\n");
    return 1;
}
