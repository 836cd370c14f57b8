// cli.h - the `forge` subcommands and the small argument helpers they share.
// Each subcommand lives in its own file (cmd_<name>.c) and returns the process exit status:
// 0 success, 1 failure (one-line message on stderr), 2 usage error.
#ifndef FG_CLI_CLI_H
#define FG_CLI_CLI_H

#include "forge.h"

int fg_cmd_info(int argc, char **argv);
int fg_cmd_synth(int argc, char **argv);
int fg_cmd_tokenize(int argc, char **argv);
int fg_cmd_detokenize(int argc, char **argv);
int fg_cmd_run(int argc, char **argv);
int fg_cmd_perplexity(int argc, char **argv);
int fg_cmd_bench(int argc, char **argv);
int fg_cmd_serve(int argc, char **argv);

// Prints "forge <cmd>: <fg_last_error()>" to stderr and returns 1.
int fg_cli_fail(const char *cmd);
// Parse helpers: print a usage error naming the flag and return false on bad input.
bool fg_cli_parse_i64(const char *cmd, const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out);
bool fg_cli_parse_f64(const char *cmd, const char *flag, const char *s, double lo, double hi, double *out);
// A context asked for beyond what the model was trained on works, but positions past it were
// never trained: one warning line on stderr (run, perplexity, serve).
void fg_cli_warn_ctx(const char *cmd, const char *flag, int32_t n_ctx, const fg_model_info *info);
// Reads a whole file into a NUL-terminated heap buffer (caller frees).
fg_status fg_cli_read_file(const char *path, char **out, size_t *len);

#endif // FG_CLI_CLI_H
