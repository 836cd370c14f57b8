// cmd_chat.c - `forge chat`: a conversation with a model on a terminal, in the model's chat
// template (chat_session.c keeps the messages and the KV cache between turns). On a terminal:
// line editing and history through libedit, multi-line input (a trailing backslash continues
// the line; a line `"""` opens and closes a block), answers streamed as generated, Ctrl-C stops
// the answer (or clears the line being typed), Ctrl-D leaves; /commands. Not a terminal: one
// answer per input line on stdout, every notice on stderr, for scripts.
// Not here: templates, generation or the cache (chat_session.c).
#include "cli/chat_session.h"
#include "cli/cli.h"

#include "base/util.h"

#include <errno.h>
#include <histedit.h>
#include <locale.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

// Set by SIGINT (Ctrl-C): stops the answer being generated, or the line being typed.
static volatile sig_atomic_t g_stop;

static void on_sigint(int sig) {
    (void)sig;
    g_stop = 1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: forge chat -m MODEL [options]\n"
            "  -m, --model PATH       GGUF model\n"
            "  --system TEXT          system message\n"
            "  --chat-template NAME   chatml|llama3|llama2|mistral|glm4|plain (default: from the file)\n"
            "  -n, --n-predict N      most tokens per answer (default -1: until the model ends its turn\n"
            "                         or the context is full)\n"
            FG_CLI_SAMPLING_HELP
            "  -t, --threads N        CPU threads (default: all cores)\n"
            "  -c, --ctx N            context length (default: the model's, at most 4096); when the\n"
            "                         conversation outgrows it, the oldest turns are dropped\n"
            "  --kv-type T            " FG_CLI_KV_TYPE_HELP "\n"
            "  --device NAME          auto (default: the GPU when usable), cpu or cuda\n"
            "  --gpu N                GPU index (default 0)\n"
            "  --verbose              after each answer, tokens reused from the cache, evaluated and\n"
            "                         generated (stderr)\n"
            "On a terminal: Enter sends; a line ending in \\ continues on the next; a line \"\"\" opens\n"
            "and closes a multi-line block; Ctrl-C stops an answer; Ctrl-D leaves; /help lists the\n"
            "commands. Otherwise (stdin not a terminal): each input line is a message and its answer\n"
            "is one line on stdout.\n");
}

typedef struct chat_args {
    fg_cli_chat_opts o;
    int64_t n_predict, threads, ctx;
    bool seed_set, verbose;
} chat_args;

// 0: ok, 2: usage error (printed), 3: --help
static int parse(int argc, char **argv, chat_args *a) {
    const char *C = "chat";
    a->n_predict = -1;
    a->o.sampling = fg_sampling_default();
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        int sr = fg_cli_sampling_flag(C, argc, argv, &i, &a->o.sampling, &a->seed_set);
        if (sr == 0)
            sr = fg_cli_kv_type_flag(C, argc, argv, &i, &a->o.kv_type);
        if (sr < 0)
            return 2;
        if (sr > 0)
            continue;
        if (!strcmp(f, "-h") || !strcmp(f, "--help"))
            return 3;
        if (!strcmp(f, "--verbose")) {
            a->verbose = true;
            continue;
        }
        static const char *const k_valued[] = {"-m", "--model", "--system", "--chat-template",
                                               "-n", "--n-predict", "-t", "--threads", "-c",
                                               "--ctx", "--device", "--gpu"};
        bool valued = false;
        for (size_t k = 0; k < sizeof k_valued / sizeof k_valued[0]; k++)
            valued = valued || !strcmp(f, k_valued[k]);
        if (!valued) {
            fprintf(stderr, "forge chat: unknown option '%s' (see forge chat --help)\n", f);
            return 2;
        }
        const char *v = fg_cli_value(C, argc, argv, &i);
        if (!v)
            return 2;
        if (!strcmp(f, "-m") || !strcmp(f, "--model")) {
            a->o.model_path = v;
        } else if (!strcmp(f, "--system")) {
            a->o.system = v;
        } else if (!strcmp(f, "--chat-template")) {
            a->o.chat_template = v;
        } else if (!strcmp(f, "-n") || !strcmp(f, "--n-predict")) {
            if (!fg_cli_parse_i64(C, f, v, -1, INT32_MAX, &a->n_predict))
                return 2;
        } else if (!strcmp(f, "-t") || !strcmp(f, "--threads")) {
            if (!fg_cli_parse_i64(C, f, v, 1, 1024, &a->threads))
                return 2;
        } else if (!strcmp(f, "-c") || !strcmp(f, "--ctx")) {
            if (!fg_cli_parse_i64(C, f, v, 16, 1 << 24, &a->ctx))
                return 2;
        } else if (!strcmp(f, "--gpu")) {
            int64_t g = 0;
            if (!fg_cli_parse_i64(C, f, v, 0, 1023, &g))
                return 2;
            a->o.gpu = (int32_t)g;
        } else { // --device
            a->o.device = v;
        }
    }
    if (!a->o.model_path) {
        fprintf(stderr, "forge chat: -m MODEL is required\n");
        return 2;
    }
    if (a->o.chat_template && fg_chat_format_from_name(a->o.chat_template) == FG_CHAT_UNKNOWN) {
        fprintf(stderr,
                "forge chat: --chat-template: unknown template '%s' (expected chatml, llama3, "
                "llama2, mistral, glm4 or plain)\n",
                a->o.chat_template);
        return 2;
    }
    a->o.n_predict = (int32_t)a->n_predict;
    a->o.n_threads = (int32_t)a->threads;
    a->o.n_ctx = (int32_t)a->ctx;
    return 0;
}

// ---- output
typedef struct ui {
    bool tty;               // stdin and stdout are a terminal
    bool verbose;
    bool answered;          // the current answer printed something
    bool cont;              // the prompt continues a message
    EditLine *el;
    History *hist;
} ui;

// Notices, command output: on the terminal in the flow of the conversation; for scripts on
// stderr, so that stdout holds only the answers.
static void note(const ui *u, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(const ui *u, const char *fmt, ...) {
    FILE *f = u->tty ? stdout : stderr;
    fflush(stdout);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fflush(f);
}

static void on_text(void *user, const char *text, size_t len) {
    ui *u = user;
    u->answered = true;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
}

static void on_prompt_done(void *user, const fg_cli_chat_stats *st) {
    ui *u = user;
    if (st->n_dropped > 0)
        note(u, "[context full: dropped the %d oldest message%s to make room]", st->n_dropped,
             st->n_dropped == 1 ? "" : "s");
}

// ---- input
typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static void buf_add(buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->p = fg_xrealloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static char *prompt_fn(EditLine *el) {
    static char first[] = "> ", more[] = "... ";
    ui *u = NULL;
    el_get(el, EL_CLIENTDATA, &u);
    return u && u->cont ? more : first;
}

static size_t chomp(const char *s, size_t n) {
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
        n--;
    return n;
}

// One message from the terminal into b: true, or false at the end (Ctrl-D).
static bool read_tty(ui *u, buf *b) {
    bool block = false;
    b->len = 0;
    buf_add(b, "", 0);
    u->cont = false;
    for (;;) {
        int count = 0;
        g_stop = 0;
        errno = 0;
        const char *line = el_gets(u->el, &count);
        if (!line || count <= 0) {
            if (g_stop || errno == EINTR) { // Ctrl-C: forget what was typed, ask again
                g_stop = 0;
                fputs("\n", stdout);
                fflush(stdout);
                b->len = 0;
                b->p[0] = '\0';
                block = u->cont = false;
                continue;
            }
            fputs("\n", stdout);
            return false;
        }
        size_t n = chomp(line, strlen(line));
        if (block) {
            if (n == 3 && !memcmp(line, "\"\"\"", 3)) {
                b->len = chomp(b->p, b->len);
                b->p[b->len] = '\0';
                break;
            }
            buf_add(b, line, n);
            buf_add(b, "\n", 1);
            continue;
        }
        if (!u->cont && n == 3 && !memcmp(line, "\"\"\"", 3)) {
            block = u->cont = true;
            continue;
        }
        if (n > 0 && line[n - 1] == '\\') {
            buf_add(b, line, n - 1);
            buf_add(b, "\n", 1);
            u->cont = true;
            continue;
        }
        buf_add(b, line, n);
        break;
    }
    u->cont = false;
    if (b->len > 0) {
        HistEvent ev;
        history(u->hist, &ev, H_ENTER, b->p);
    }
    return true;
}

// One line from a pipe or file into b: true, or false at the end.
static bool read_line(buf *b) {
    b->len = 0;
    buf_add(b, "", 0);
    int ch;
    while ((ch = getchar()) != EOF && ch != '\n') {
        char cc = (char)ch;
        buf_add(b, &cc, 1);
    }
    if (ch == EOF && b->len == 0)
        return false;
    b->len = chomp(b->p, b->len);
    b->p[b->len] = '\0';
    return true;
}

// ---- commands
static const char *skip_ws(const char *s) {
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

static void help(const ui *u) {
    note(u, "  /reset          forget the conversation (the system message stays)\n"
            "  /system [TEXT]  show or set the system message\n"
            "  /save FILE      write the conversation as JSON ({\"messages\": [...]}, a chat\n"
            "                  completions body too)\n"
            "  /load FILE      continue a saved conversation\n"
            "  /help           this list; /quit or Ctrl-D leaves\n"
            "  //text          sends \"/text\" as a message\n"
            "Enter sends; a line ending in \\ continues on the next; a line \"\"\" opens and closes\n"
            "a multi-line block; Ctrl-C stops an answer.");
}

// 1: handled, 0: not a command (a message), -1: leave.
static int command(fg_cli_chat *c, ui *u, const char *msg) {
    if (msg[0] != '/' || msg[1] == '/')
        return 0;
    const char *name = msg + 1;
    size_t nl = strcspn(name, " \t\n");
    const char *arg = skip_ws(name + nl);
#define IS(s) (nl == strlen(s) && !strncmp(name, s, nl))
    if (IS("quit") || IS("exit"))
        return -1;
    if (IS("help") || IS("?")) {
        help(u);
    } else if (IS("reset")) {
        fg_cli_chat_reset(c);
        note(u, "[conversation reset]");
    } else if (IS("system")) {
        if (!*arg) {
            const char *s = fg_cli_chat_system(c);
            note(u, "[system message: %s]", s ? s : "(none)");
        } else if (fg_cli_chat_set_system(c, arg) != FG_OK) {
            note(u, "[/system: %s]", fg_last_error());
        } else {
            note(u, "[system message set]");
        }
    } else if (IS("save") || IS("load")) {
        bool save = IS("save");
        if (!*arg) {
            note(u, "[/%s needs a file name]", save ? "save" : "load");
        } else if ((save ? fg_cli_chat_save(c, arg) : fg_cli_chat_load(c, arg)) != FG_OK) {
            note(u, "[/%s: %s]", save ? "save" : "load", fg_last_error());
        } else {
            int32_t n = fg_cli_chat_n_messages(c);
            note(u, "[%s %d message%s %s %s]", save ? "saved" : "loaded", n, n == 1 ? "" : "s",
                 save ? "to" : "from", arg);
        }
    } else {
        note(u, "[unknown command '/%.*s': /help lists them]", (int)FG_MIN(nl, (size_t)64), name);
    }
#undef IS
    return 1;
}

// ---- one turn
// 0: go on, 1: a fatal error (printed)
static int turn(fg_cli_chat *c, ui *u, const char *msg, size_t len) {
    fg_cli_chat_io io = {.text = on_text, .prompt_done = on_prompt_done, .user = u,
                         .stop = &g_stop};
    fg_cli_chat_stats st;
    g_stop = 0;
    u->answered = false;
    fg_status s = fg_cli_chat_turn(c, msg, len, &io, &st);
    if (s == FG_ERR_CAPACITY || s == FG_ERR_INVALID_ARG) {
        note(u, "[%s]", fg_last_error());
        return 0;
    }
    if (s != FG_OK) {
        fputs("\n", stdout);
        fg_cli_fail("chat");
        return 1;
    }
    if (u->answered || !u->tty)
        fputs("\n", stdout);
    fflush(stdout);
    switch (st.end) {
    case FG_CLI_CHAT_INTERRUPTED: note(u, "[stopped]"); break;
    case FG_CLI_CHAT_LENGTH: note(u, "[the answer reached %d tokens (-n)]", st.n_gen); break;
    case FG_CLI_CHAT_CTX_FULL:
        note(u, "[context full (%d tokens): the answer was cut; the oldest turns will be dropped "
                "to go on]",
             fg_cli_chat_n_ctx(c));
        break;
    default: break;
    }
    if (u->verbose) {
        fflush(stdout);
        fprintf(stderr,
                "[cache: %d tokens reused, %d evaluated (%s); answer: %d tokens in %.2f s]\n",
                st.n_reused, st.n_prompt, st.incremental ? "appended" : "re-rendered", st.n_gen,
                st.t_gen_s);
    }
    return 0;
}

int fg_cmd_chat(int argc, char **argv) {
    chat_args a;
    memset(&a, 0, sizeof a);
    int pr = parse(argc, argv, &a);
    if (pr == 3) {
        usage(stdout);
        return 0;
    }
    if (pr)
        return pr;
    if (!a.seed_set)
        a.o.sampling.seed = (uint64_t)time(NULL);
    ui u;
    memset(&u, 0, sizeof u);
    u.tty = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);
    u.verbose = a.verbose;
    fg_cli_chat *c = NULL;
    if (fg_cli_chat_create(&a.o, &c) != FG_OK)
        return fg_cli_fail("chat");

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint; // no SA_RESTART: a read waiting for input returns on Ctrl-C
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);

    if (u.tty) {
        if (!setlocale(LC_CTYPE, "") || !strcmp(setlocale(LC_CTYPE, NULL), "C"))
            setlocale(LC_CTYPE, "C.UTF-8"); // libedit reads UTF-8 characters
        u.hist = history_init();
        HistEvent ev;
        history(u.hist, &ev, H_SETSIZE, 1000);
        history(u.hist, &ev, H_SETUNIQUE, 1);
        u.el = el_init("forge", stdin, stdout, stderr);
        el_set(u.el, EL_EDITOR, "emacs");
        el_set(u.el, EL_HIST, history, u.hist);
        el_set(u.el, EL_CLIENTDATA, &u);
        el_set(u.el, EL_PROMPT, prompt_fn);
        el_source(u.el, NULL); // the user's ~/.editrc, if any
        fprintf(stderr,
                "forge chat: %s, template %s, context %d tokens, seed %llu\n"
                "Enter sends; /help lists the commands; Ctrl-C stops an answer, Ctrl-D leaves.\n",
                fg_cli_chat_model_name(c), fg_cli_chat_format(c), fg_cli_chat_n_ctx(c),
                (unsigned long long)fg_cli_chat_seed(c));
    }
    int rc = 0;
    buf b = {0};
    for (;;) {
        if (!(u.tty ? read_tty(&u, &b) : read_line(&b)))
            break;
        int cr = command(c, &u, b.p);
        if (cr < 0)
            break;
        if (cr > 0)
            continue;
        const char *msg = b.p[0] == '/' ? b.p + 1 : b.p; // "//text" sends "/text"
        if (!*skip_ws(msg))
            continue;
        if (turn(c, &u, msg, strlen(msg))) {
            rc = 1;
            break;
        }
    }
    fflush(stdout);
    free(b.p);
    if (u.el)
        el_end(u.el);
    if (u.hist)
        history_end(u.hist);
    fg_cli_chat_destroy(c);
    return rc;
}
