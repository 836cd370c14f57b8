// cmd_serve.c - `forge serve`: parses the flags, starts the HTTP listener, loads the model
// (/health says "loading" meanwhile), then waits for SIGINT/SIGTERM (the handler only writes
// to a pipe) and shuts down gracefully: running requests get up to --grace seconds.
// Not here: anything HTTP (src/server). Exit status 0 after a clean shutdown.
#include "cli/cli.h"

#include "forge/server.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static int g_sig_pipe[2] = {-1, -1};

static void on_signal(int sig) {
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    if (write(g_sig_pipe[1], &b, 1) < 0) {
        // nothing to do in a handler
    }
    errno = saved;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: forge serve -m MODEL [options]\n"
            "  -m, --model PATH        GGUF model file\n"
            "  --host ADDR             bind address (default 127.0.0.1)\n"
            "  --port N                port (default 8080; 0: any free port)\n"
            "  --api-key KEY           require 'Authorization: Bearer KEY' on /v1/* (repeat for\n"
            "                          several keys; default: $FORGE_API_KEY, comma-separated keys;\n"
            "                          an empty key is an error). Requests are visible to their key\n"
            "  --parallel N            sequences decoded together (default 16)\n"
            "  --ctx N                 context per sequence (default: model's, capped at 4096)\n"
            "  --device auto|cpu|cuda  backend (default auto: the GPU when usable, else the CPU)\n"
            "  --gpu N                 GPU index (default 0)\n"
            "  --threads N             CPU threads (default: all cores but one; 0: all)\n"
            "  --tensor-parallel N     split the model across N GPUs (gpu..gpu+N-1; one worker thread each,\n"
            "                          this process) or N groups of CPU threads (default 1)\n"
            "  --alias NAME            model id in the API (default: file stem)\n"
            "  --chat-template NAME    chatml|llama3|llama2|mistral|glm4|plain (default: from the file)\n"
            "  --queue N               waiting requests before 429 (default 256)\n"
            "  --gpu-memory-fraction F share of GPU memory to use (default 0.9): the KV pool gets what\n"
            "                          the weights and scratch leave of it\n"
            "  --kv-tokens N           KV cache size in tokens for all sequences together\n"
            "                          (default: on a GPU what --gpu-memory-fraction leaves, on the\n"
            "                          CPU parallel x ctx; smaller pools preempt and recompute)\n"
            "  --kv-type T             " FG_CLI_KV_TYPE_HELP "\n"
            "  --no-prefix-cache       compute every prompt in full (default: reuse the cached KV\n"
            "                          of prompt prefixes seen before, evicted least recently used)\n"
            "  --max-body BYTES        request body limit (default 1048576)\n"
            "  --http-threads N        HTTP event-loop threads (default 4)\n"
            "  --max-conns N           open connections in total (default 512)\n"
            "  --max-conns-per-ip N    open connections from one address (default 128)\n"
            "  --request-timeout S     a request's head and body must arrive within S seconds\n"
            "                          (default 30)\n"
            "  --grace SECONDS         shutdown deadline for running requests (default 10)\n"
            "  --no-webui              no chat page at / (404)\n"
            "  --verbose               log each request on stderr\n");
}

#define MAX_KEYS 64

// Keys from FORGE_API_KEY ("k1,k2"): copies into keys[], FG-style message on a bad value.
static int keys_from_env(const char *env, char **store, const char **keys, int *n_keys) {
    if (!*env) {
        fprintf(stderr, "forge serve: FORGE_API_KEY is set but empty (an unset variable?); set "
                        "it to a key, or unset it for a server without keys\n");
        return 2;
    }
    *store = strdup(env);
    if (!*store)
        return 1;
    for (char *save = NULL, *k = strtok_r(*store, ",", &save); k; k = strtok_r(NULL, ",", &save)) {
        if (*n_keys == MAX_KEYS) {
            fprintf(stderr, "forge serve: FORGE_API_KEY holds more than %d keys\n", MAX_KEYS);
            return 2;
        }
        keys[(*n_keys)++] = k;
    }
    if (*n_keys == 0 || strstr(env, ",,") || env[0] == ',' || env[strlen(env) - 1] == ',') {
        fprintf(stderr, "forge serve: FORGE_API_KEY has an empty key (keys are comma-separated)\n");
        return 2;
    }
    return 0;
}

// An API key must be something a client can send: visible ASCII, no spaces.
static bool key_ok(const char *k, const char *from, int i) {
    if (!*k) {
        fprintf(stderr, "forge serve: %s: API key %d is empty (an unset variable?); give a "
                        "non-empty key, or no --api-key for a server without keys\n", from, i + 1);
        return false;
    }
    for (const char *p = k; *p; p++)
        if (*p < 0x21 || *p > 0x7e) {
            fprintf(stderr, "forge serve: %s: API key %d contains a space, control or non-ASCII "
                            "character\n", from, i + 1);
            return false;
        }
    return true;
}

int fg_cmd_serve(int argc, char **argv) {
    fg_server_opts o;
    memset(&o, 0, sizeof o);
    const char *keys[MAX_KEYS];
    int n_keys = 0;
    char *env_keys = NULL;
    o.port = 8080;
    double grace = 10.0;
    bool threads_given = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t n = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--verbose")) {
            o.log_requests = true;
            continue;
        }
        if (!strcmp(a, "--no-webui")) {
            o.no_webui = true;
            continue;
        }
        if (!strcmp(a, "--no-prefix-cache")) {
            o.no_prefix_cache = true;
            continue;
        }
        int kr = fg_cli_kv_type_flag("serve", argc, argv, &i, &o.kv_type);
        if (kr < 0)
            return 2;
        if (kr > 0)
            continue;
        if (!fg_cli_value("serve", argc, argv, &i)) { // v is argv[i + 1]
            usage(stderr);
            return 2;
        }
        if (!strcmp(a, "-m") || !strcmp(a, "--model"))
            o.model_path = v;
        else if (!strcmp(a, "--host"))
            o.host = v;
        else if (!strcmp(a, "--port")) {
            if (!fg_cli_parse_i64("serve", a, v, 0, 65535, &n))
                return 2;
            o.port = (int32_t)n;
        } else if (!strcmp(a, "--api-key")) {
            if (n_keys == MAX_KEYS) {
                fprintf(stderr, "forge serve: more than %d --api-key\n", MAX_KEYS);
                return 2;
            }
            keys[n_keys++] = v;
        } else if (!strcmp(a, "--http-threads")) {
            if (!fg_cli_parse_i64("serve", a, v, 1, 64, &n))
                return 2;
            o.http_threads = (int32_t)n;
        } else if (!strcmp(a, "--max-conns")) {
            if (!fg_cli_parse_i64("serve", a, v, 1, 1 << 20, &n))
                return 2;
            o.max_conns = (int32_t)n;
        } else if (!strcmp(a, "--max-conns-per-ip")) {
            if (!fg_cli_parse_i64("serve", a, v, 1, 1 << 20, &n))
                return 2;
            o.max_conns_per_ip = (int32_t)n;
        } else if (!strcmp(a, "--request-timeout")) {
            if (!fg_cli_parse_f64("serve", a, v, 0.1, 3600, &o.request_timeout_s))
                return 2;
        }
        else if (!strcmp(a, "--parallel")) {
            if (!fg_cli_parse_i64("serve", a, v, 1, 1024, &n))
                return 2;
            o.n_parallel = (int32_t)n;
        } else if (!strcmp(a, "--ctx")) {
            if (!fg_cli_parse_i64("serve", a, v, 16, 1 << 20, &n))
                return 2;
            o.n_ctx = (int32_t)n;
        } else if (!strcmp(a, "--device")) {
            if (!fg_cli_device_valid("serve", v))
                return 2;
            o.device = v;
        } else if (!strcmp(a, "--gpu")) {
            if (!fg_cli_parse_i64("serve", a, v, 0, 1023, &n))
                return 2;
            o.gpu = (int32_t)n;
        }
        else if (!strcmp(a, "--threads")) {
            if (!fg_cli_parse_i64("serve", a, v, 0, 1024, &n))
                return 2;
            o.n_threads = (int32_t)n;
            threads_given = true;
        } else if (!strcmp(a, "--tensor-parallel")) {
            if (!fg_cli_parse_i64("serve", a, v, 1, 8, &n))
                return 2;
            o.tensor_parallel = (int32_t)n;
        } else if (!strcmp(a, "--alias"))
            o.alias = v;
        else if (!strcmp(a, "--chat-template"))
            o.chat_template = v;
        else if (!strcmp(a, "--queue")) {
            if (!fg_cli_parse_i64("serve", a, v, 1, 1 << 20, &n))
                return 2;
            o.queue_cap = (int32_t)n;
        } else if (!strcmp(a, "--gpu-memory-fraction")) {
            double f = 0;
            if (!fg_cli_parse_f64("serve", a, v, 0.05, 1.0, &f))
                return 2;
            o.gpu_memory_fraction = f;
        } else if (!strcmp(a, "--kv-tokens")) {
            if (!fg_cli_parse_i64("serve", a, v, 16, 1 << 28, &n))
                return 2;
            o.kv_tokens = (int32_t)n;
        } else if (!strcmp(a, "--max-body")) {
            if (!fg_cli_parse_i64("serve", a, v, 64, (int64_t)1 << 32, &n))
                return 2;
            o.max_body = (size_t)n;
        } else if (!strcmp(a, "--grace")) {
            if (!fg_cli_parse_f64("serve", a, v, 0, 3600, &grace))
                return 2;
        } else {
            fprintf(stderr, "forge serve: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!o.model_path) {
        fprintf(stderr, "forge serve: -m MODEL is required\n");
        usage(stderr);
        return 2;
    }
    if (!threads_given) {
        // leave one core to the HTTP threads: with every core in the compute pool, streams
        // stall behind it (measured on 2 cores, stories260K, 16 streams: 1.5k vs 12.9k tok/s)
        long n_cpu = sysconf(_SC_NPROCESSORS_ONLN);
        o.n_threads = n_cpu > 1 ? (int32_t)(n_cpu - 1) : 1;
    }
    if (!o.device)
        o.device = fg_cli_default_device();
    const char *key_src = "--api-key";
    const char *env = getenv("FORGE_API_KEY");
    if (n_keys == 0 && env) {
        key_src = "FORGE_API_KEY";
        int rc = keys_from_env(env, &env_keys, keys, &n_keys);
        if (rc) {
            free(env_keys);
            return rc;
        }
    }
    for (int k = 0; k < n_keys; k++)
        if (!key_ok(keys[k], key_src, k)) {
            free(env_keys);
            return 2;
        }
    o.api_keys = keys;
    o.n_api_keys = n_keys;
    // every connection is a descriptor: allow what --max-conns asks for (up to the hard limit)
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rlim_t want = (rlim_t)(o.max_conns > 0 ? o.max_conns : 512) * 2 + 256;
        rl.rlim_cur = want < rl.rlim_max ? (want > rl.rlim_cur ? want : rl.rlim_cur) : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (o.tensor_parallel > 1) // each CPU rank gets its share (the GPU backends ignore it)
        o.n_threads = fg_cli_rank_threads(o.n_threads, o.tensor_parallel);
    if (pipe(g_sig_pipe) != 0) {
        fprintf(stderr, "forge serve: pipe: %s\n", strerror(errno));
        return 1;
    }
    fcntl(g_sig_pipe[1], F_SETFL, O_NONBLOCK);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    fg_server *s = NULL;
    if (fg_server_create(&o, &s) != FG_OK) {
        free(env_keys);
        return fg_cli_fail("serve");
    }
    fprintf(stderr, "forge serve: listening on http://%s:%d (loading %s)\n",
            o.host ? o.host : "127.0.0.1", fg_server_port(s), o.model_path);
    // FORGE_SERVE_LOAD_DELAY_S (tests only): hold the "loading" state that long before the
    // model loads, so that clients can be checked against it
    const char *delay = getenv("FORGE_SERVE_LOAD_DELAY_S");
    double d = delay ? atof(delay) : 0;
    if (d > 0 && d <= 60) {
        struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
        nanosleep(&ts, NULL); // (a signal ends it early; the shutdown follows the load)
    }
    if (fg_server_load(s) != FG_OK) {
        int rc = fg_cli_fail("serve");
        fg_server_destroy(s);
        free(env_keys);
        return rc;
    }
    if (o.n_ctx > 0 && fg_server_model_info(s))
        fg_cli_warn_ctx("serve", "--ctx", fg_server_n_ctx(s), fg_server_model_info(s));
    const fg_model_info *mi = fg_server_model_info(s);
    bool embeds = mi && mi->pooling != 0; // issue 14: POST /v1/embeddings, no chat
    fprintf(stderr, "forge serve: ready on http://%s:%d%s\n", o.host ? o.host : "127.0.0.1", fg_server_port(s),
            embeds ? " (embeddings at /v1/embeddings)" : o.no_webui ? "" : " (chat page at /)");
    for (;;) {
        struct pollfd p = {.fd = g_sig_pipe[0], .events = POLLIN};
        int rc = poll(&p, 1, -1);
        if (rc > 0)
            break;
        if (rc < 0 && errno != EINTR)
            break;
    }
    fprintf(stderr, "forge serve: shutting down (grace %.0f s)\n", grace);
    fg_server_shutdown(s, grace);
    fg_server_destroy(s);
    free(env_keys);
    close(g_sig_pipe[0]);
    close(g_sig_pipe[1]);
    fprintf(stderr, "forge serve: stopped\n");
    return 0;
}
