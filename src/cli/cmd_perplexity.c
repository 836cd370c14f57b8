// cmd_perplexity.c - `forge perplexity` (placeholder until its module lands; replaced by the module's owner).
#include "cli/cli.h"

#include <stdio.h>

int fg_cmd_perplexity(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "forge perplexity: not built yet\n");
    return 1;
}
