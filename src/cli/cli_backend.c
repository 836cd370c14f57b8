// cli_backend.c - the --device / --gpu / --threads choice shared by run, perplexity, bench,
// serve and chat: "auto" (the default; FORGE_DEVICE overrides the default) takes the GPU when
// one is usable and otherwise the CPU, with a one-line notice when the build has a GPU backend
// but no GPU is usable; "cuda" without a usable GPU is an error. The --kv-type flag of the same
// commands. Also the one line each command prints after loading: the device and the bytes of
// weights, KV pool (its capacity in tokens and its type) and scratch.
#include "cli/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

bool fg_cli_device_valid(const char *cmd, const char *device) {
    if (!strcmp(device, "auto") || !strcmp(device, "cpu") || !strcmp(device, "cuda"))
        return true;
    fprintf(stderr, "forge %s: --device expects auto, cpu or cuda, got '%s'\n", cmd, device);
    return false;
}

int fg_cli_kv_type_flag(const char *cmd, int argc, char **argv, int *i, uint32_t *kv_type) {
    if (strcmp(argv[*i], "--kv-type"))
        return 0;
    const char *v = fg_cli_value(cmd, argc, argv, i);
    if (!v)
        return -1;
    if (!strcmp(v, "f16"))
        *kv_type = FG_TYPE_F16;
    else if (!strcmp(v, "q8_0"))
        *kv_type = FG_TYPE_Q8_0;
    else if (!strcmp(v, "f32"))
        *kv_type = FG_TYPE_F32;
    else {
        fprintf(stderr, "forge %s: --kv-type expects f16, q8_0 or f32, got '%s'\n", cmd, v);
        return -1;
    }
    return 1;
}

const char *fg_cli_default_device(void) {
    const char *d = getenv("FORGE_DEVICE");
    return d && *d ? d : "auto";
}

fg_status fg_cli_backend(const char *cmd, const char *device, int gpu, int threads, fg_backend **out) {
    fg_backend_opts o = {.n_threads = threads, .device = gpu};
    if (!device)
        device = fg_cli_default_device();
    if (!strcmp(device, "auto")) {
        fg_status st = fg_backend_create("cuda", &o, out);
        if (st == FG_OK)
            return FG_OK;
        if (st != FG_ERR_UNSUPPORTED) // a GPU build on a machine without a usable GPU
            fprintf(stderr, "forge %s: no usable GPU (%s); running on the CPU\n", cmd, fg_last_error());
        device = "cpu";
    }
    return fg_backend_create(device, &o, out);
}

int fg_cli_rank_threads(int threads, int tp) {
    if (tp <= 1)
        return threads;
    long n = threads > 0 ? threads : sysconf(_SC_NPROCESSORS_ONLN);
    return n / tp > 1 ? (int)(n / tp) : 1;
}

void fg_cli_tensor_parallel(int tp, int rank_threads, int gpu, fg_backend_opts *bo, fg_model_opts *mo) {
    *bo = (fg_backend_opts){.n_threads = rank_threads, .device = gpu};
    mo->tp_size = tp > 1 ? tp : 1;
    mo->tp_backend = bo;
}

static double gib(uint64_t b) { return (double)b / (1024.0 * 1024.0 * 1024.0); }

void fg_cli_print_memory(const char *cmd, fg_backend *be, const fg_model *m, const fg_kv_store *kv) {
    // on a terminal (like the loading bar) or with FORGE_VERBOSE=1: scripts read stderr for errors
    const char *v = getenv("FORGE_VERBOSE");
    if (!isatty(2) && !(v && !strcmp(v, "1")))
        return;
    const fg_model_info *in = fg_model_get_info(m);
    uint64_t kvb = kv ? fg_kv_store_bytes(kv) : 0, free_b = 0, total_b = 0;
    fprintf(stderr, "forge %s: %s; weights %.2f GiB, KV pool %.2f GiB (%d tokens, %s), scratch %.2f GiB", cmd,
            fg_backend_describe(be), gib(in->weight_bytes), gib(kvb),
            kv ? fg_kv_store_n_pages(kv) * fg_kv_store_page_size(kv) : 0,
            kv ? fg_type_name(fg_kv_store_type(kv)) : "-", gib(in->scratch_bytes));
    if (fg_backend_mem_info(be, &free_b, &total_b) == FG_OK && total_b > 0)
        fprintf(stderr, "; %.2f of %.2f GiB device memory free", gib(free_b), gib(total_b));
    if (in->tp_size > 1)
        fprintf(stderr, "; tensor-parallel %d (rank 0's share; each rank holds its own)", in->tp_size);
    fputc('\n', stderr);
}
