// cmd_detokenize.c - `forge detokenize` (placeholder until its module lands; replaced by the module's owner).
#include "cli/cli.h"

#include <stdio.h>

int fg_cmd_detokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "forge detokenize: not built yet\n");
    return 1;
}
