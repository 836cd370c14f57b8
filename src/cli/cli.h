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
// --device auto|cpu|cuda (auto: the GPU when usable, else the CPU with a notice), --gpu N.
bool fg_cli_device_valid(const char *cmd, const char *device);
fg_status fg_cli_backend(const char *cmd, const char *device, int gpu, int threads, fg_backend **out);
// --tensor-parallel N (1..8): the CPU threads of each rank (threads, or all cores, shared out
// among the N ranks; at least 1), and the model options that split the model across N ranks:
// GPUs gpu..gpu+N-1, or N groups of CPU threads (bo, filled here, must outlive the load).
int fg_cli_rank_threads(int threads, int tp);
void fg_cli_tensor_parallel(int tp, int rank_threads, int gpu, fg_backend_opts *bo, fg_model_opts *mo);
// "forge <cmd>: <device>; weights X GiB, KV pool Y GiB (N tokens), scratch Z GiB; F of T GiB free"
void fg_cli_print_memory(const char *cmd, fg_backend *be, const fg_model *m, const fg_kv_store *kv);
// Reads a whole file into a NUL-terminated heap buffer (caller frees).
fg_status fg_cli_read_file(const char *path, char **out, size_t *len);

#endif // FG_CLI_CLI_H
