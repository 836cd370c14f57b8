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
int fg_cmd_chat(int argc, char **argv);
int fg_cmd_embed(int argc, char **argv); // issue 14

// Prints "forge <cmd>: <fg_last_error()>" to stderr and returns 1.
int fg_cli_fail(const char *cmd);
// The value of the flag argv[*i]: advances *i and returns it; NULL (after printing "forge <cmd>:
// <flag> needs a value") when the flag is last.
const char *fg_cli_value(const char *cmd, int argc, char **argv, int *i);
// Parse helpers: print a usage error naming the flag and return false on bad input.
bool fg_cli_parse_i64(const char *cmd, const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out);
bool fg_cli_parse_f64(const char *cmd, const char *flag, const char *s, double lo, double hi, double *out);
// --device auto|cpu|cuda (auto: the GPU when usable, else the CPU with a notice), --gpu N.
bool fg_cli_device_valid(const char *cmd, const char *device);
const char *fg_cli_default_device(void); // $FORGE_DEVICE, else "auto"
fg_status fg_cli_backend(const char *cmd, const char *device, int gpu, int threads, fg_backend **out);
// --tensor-parallel N (1..8): the CPU threads of each rank (threads, or all cores, shared out
// among the N ranks; at least 1), and the model options that split the model across N ranks:
// GPUs gpu..gpu+N-1, or N groups of CPU threads (bo, filled here, must outlive the load).
int fg_cli_rank_threads(int threads, int tp);
void fg_cli_tensor_parallel(int tp, int rank_threads, int gpu, fg_backend_opts *bo, fg_model_opts *mo);
// "forge <cmd>: <device>; weights X GiB, KV pool Y GiB (N tokens, type), scratch Z GiB; F of T GiB free"
void fg_cli_print_memory(const char *cmd, fg_backend *be, const fg_model *m, const fg_kv_store *kv);
// The sampling flags of run and chat (cli_sampling.c): when argv[*i] is one of them, parses its
// value into *s (--seed also sets *seed_set), advances *i and returns 1; returns 0 for another
// flag and -1 after printing a usage error.
int fg_cli_sampling_flag(const char *cmd, int argc, char **argv, int *i, fg_sampling *s,
                         bool *seed_set);
#define FG_CLI_SAMPLING_HELP                                                                  \
    "  --temp T               temperature (default 0.8; 0: greedy)\n"                         \
    "  --top-k K              (default 40; 0: off)\n"                                         \
    "  --top-p P              (default 0.95; 1: off)\n"                                       \
    "  --min-p P              (default 0.05; 0: off)\n"                                       \
    "  --repeat-penalty R     (default 1: off)\n"                                             \
    "  --seed S               sampling seed (default: from the clock, printed)\n"
// --kv-type of run, perplexity, bench, serve and chat: when argv[*i] is --kv-type, parses its
// value (f16, q8_0 or f32) into *kv_type, advances *i and returns 1; returns 0 for another flag
// and -1 after printing a usage error.
int fg_cli_kv_type_flag(const char *cmd, int argc, char **argv, int *i, uint32_t *kv_type);
#define FG_CLI_KV_TYPE_HELP "KV cache type: f16 (default), q8_0 (8-bit: about half the memory; head_dim a multiple of 32) or f32"
// A context asked for beyond what the model was trained on works, but positions past it were
// never trained: one warning line on stderr (run, perplexity, serve).
void fg_cli_warn_ctx(const char *cmd, const char *flag, int32_t n_ctx, const fg_model_info *info);
// Reads a whole file into a NUL-terminated heap buffer (caller frees).
fg_status fg_cli_read_file(const char *path, char **out, size_t *len);

#endif // FG_CLI_CLI_H
