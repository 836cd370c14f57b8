// cmd_info.c - `forge info` (placeholder until its module lands; replaced by the module's owner).
#include "cli/cli.h"

#include <stdio.h>

int fg_cmd_info(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "forge info: not built yet\n");
    return 1;
}
