// forge/engine.h - what runs requests on a model: the KV page allocator (free list, page
// tables per sequence), the sampler, and the engine: a bounded request queue and one
// scheduler thread doing continuous batching with chunked prefill over the paged KV cache.
// Used by `forge run`, `forge serve`, `forge perplexity`, `forge bench`.
#ifndef FORGE_ENGINE_H
#define FORGE_ENGINE_H

#include "forge/status.h"
#include "forge/model.h"
#include "forge/sample.h"

#ifdef __cplusplus
extern "C" {
#endif

// ---- KV page allocator (host bookkeeping only; the pages' memory is an fg_kv_store)
typedef struct fg_kv_pages fg_kv_pages;

fg_status fg_kv_pages_create(int32_t n_pages, int32_t page_size, int32_t max_seqs,
                             fg_kv_pages **out);
void fg_kv_pages_destroy(fg_kv_pages *p);
int32_t fg_kv_pages_page_size(const fg_kv_pages *p);
int32_t fg_kv_pages_n_free(const fg_kv_pages *p); // pages that can be taken (incl. idle cached)
int32_t fg_kv_pages_n_total(const fg_kv_pages *p);
// A new empty sequence: FG_ERR_CAPACITY when max_seqs are live.
fg_status fg_kv_seq_new(fg_kv_pages *p, int32_t *seq);
// Grows the sequence by n tokens, taking pages as needed: FG_ERR_CAPACITY (nothing changed)
// when not enough pages are free.
fg_status fg_kv_seq_append(fg_kv_pages *p, int32_t seq, int32_t n);
// Shrinks to n tokens, returning whole pages no longer needed.
fg_status fg_kv_seq_truncate(fg_kv_pages *p, int32_t seq, int32_t n);
// Frees the sequence and its pages (pages shared with a fork are freed with the last user).
void fg_kv_seq_free(fg_kv_pages *p, int32_t seq);
// A new sequence sharing src's pages (reference counted). Before writing into a shared page
// the caller must un-share it: fg_kv_seq_prepare_write reports the copies to do.
fg_status fg_kv_seq_fork(fg_kv_pages *p, int32_t src, int32_t *dst);
int32_t fg_kv_seq_len(const fg_kv_pages *p, int32_t seq);
const int32_t *fg_kv_seq_pages(const fg_kv_pages *p, int32_t seq); // page table
int32_t fg_kv_seq_n_pages(const fg_kv_pages *p, int32_t seq);
// Makes the pages covering positions [from, len) exclusively owned by seq; for each page that
// had to be copied, *copies gets (dst, src) pairs (n_copies of them, at most 2 * cap_copies
// ints) for the caller to apply with fg_kv_store_copy_page.
fg_status fg_kv_seq_prepare_write(fg_kv_pages *p, int32_t seq, int32_t from, int32_t *copies,
                                  int32_t cap_copies, int32_t *n_copies);
// Pages that appending n tokens to seq would take (seq -1 or not live: a new sequence).
int32_t fg_kv_seq_pages_needed(const fg_kv_pages *p, int32_t seq, int32_t n);
int32_t fg_kv_pages_n_seqs(const fg_kv_pages *p);                 // live sequences
int32_t fg_kv_pages_refcount(const fg_kv_pages *p, int32_t page); // -1 for a bad id
// Checks the invariants (every page free, cached-idle or held; refcounts = holders; with the
// prefix cache: LRU list and hash table consistent, every cached page's parent cached);
// tests and debugging.
fg_status fg_kv_pages_check(const fg_kv_pages *p);

// ---- prefix cache (issue 13). Off until enabled. A full page whose KV has been computed is
// published under hash_fn(parent's hash, its page_size tokens), the chain rooted at model_id;
// a later sequence maps the longest cached chain of its tokens' full pages (shared, read-only:
// fg_kv_seq_prepare_write copies cached pages as it copies shared ones). A match compares the
// page's stored tokens and its parent page, never the hash alone. Cached pages nobody holds
// stay on an LRU list; fg_kv_pages_n_free counts them (free list + idle cached) and taking a
// page evicts the least recently used one only when the free list is empty.
typedef uint64_t (*fg_kv_hash_fn)(uint64_t parent_hash, const int32_t *tokens, int32_t n);
uint64_t fg_kv_hash_tokens(uint64_t parent_hash, const int32_t *tokens, int32_t n); // built-in
// Before any sequence exists; hash_fn NULL: fg_kv_hash_tokens (tests force collisions).
fg_status fg_kv_pages_enable_prefix_cache(fg_kv_pages *p, uint64_t model_id,
                                          fg_kv_hash_fn hash_fn);
bool fg_kv_pages_prefix_cache_on(const fg_kv_pages *p);
// Tokens (a multiple of page_size, at most n) covered by the longest cached chain of
// tokens[0..n); *n_idle (may be NULL): how many of those pages no sequence holds. 0 when off.
int32_t fg_kv_pages_lookup_prefix(const fg_kv_pages *p, const int32_t *tokens, int32_t n,
                                  int32_t *n_idle);
// Maps that chain into seq (live, empty); *n_mapped: its length now.
fg_status fg_kv_seq_map_prefix(fg_kv_pages *p, int32_t seq, const int32_t *tokens, int32_t n,
                               int32_t *n_mapped);
// Publishes seq's full pages among its first n tokens (tokens: the sequence's own, their KV
// computed). A page whose content is cached already is replaced by the cached one (its own
// page is released). No-op when the cache is off.
fg_status fg_kv_seq_publish(fg_kv_pages *p, int32_t seq, const int32_t *tokens, int32_t n);
typedef struct fg_kv_cache_info {
    int32_t pages;      // cached pages, held or idle
    int32_t idle;       // cached pages no sequence holds (evictable, LRU)
    uint64_t evictions; // cached pages dropped to make room
} fg_kv_cache_info;
void fg_kv_pages_cache_info(const fg_kv_pages *p, fg_kv_cache_info *out);

// ---- sampling
// One token's logit bias (OpenAI's logit_bias): added to its logit before anything else.
typedef struct fg_logit_bias {
    int32_t token;
    float bias;
} fg_logit_bias;
#define FG_MAX_LOGIT_BIAS 1024

typedef struct fg_sampling {
    float temperature;       // <= 0: greedy (argmax, ties to the lowest id)
    int32_t top_k;           // <= 0: off
    float top_p;             // >= 1: off
    float min_p;             // <= 0: off
    float repeat_penalty;    // 1: off (llama.cpp's: logit / p if > 0 else logit * p)
    int32_t repeat_last_n;   // window for the penalties (-1: whole history, 0: off)
    float frequency_penalty; // 0: off (OpenAI's)
    float presence_penalty;  // 0: off
    uint64_t seed;           // same seed + same logits -> same tokens
    // [n_logit_bias] (borrowed: the sampler copies it) token ids in [0, n_vocab), finite
    // biases; a sparse list any sampler (CPU now, GPU later) applies before the penalties
    const fg_logit_bias *logit_bias;
    int32_t n_logit_bias;    // 0..FG_MAX_LOGIT_BIAS
} fg_sampling;

fg_sampling fg_sampling_default(void); // temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, ...
fg_sampling fg_sampling_greedy(void);

typedef struct fg_sampler fg_sampler;
fg_status fg_sampler_create(const fg_sampling *params, int32_t n_vocab, fg_sampler **out);
void fg_sampler_destroy(fg_sampler *s);
// Records a token in the history the penalties look at (prompt tokens and generated ones).
void fg_sampler_accept(fg_sampler *s, int32_t token);
// Picks the next token from logits[n_vocab] (logits are not modified), on the host, with the
// arithmetic of the CPU backend's sample op. The token is not accepted into the history.
int32_t fg_sampler_sample(fg_sampler *s, const float *logits);
// Sampling on the backend (forge/sample.h): the entries the next row needs at most (logit bias
// + penalised tokens; one more after each fg_sampler_accept, at most), then the row itself:
// the parameters, n_top (-1: no log-probabilities), the next uniform draw (not consumed) and
// the entries into ent[0..cap). Returns their count (row->n_entries), -1 when cap is too
// small; row->first_entry is the caller's to set.
int32_t fg_sampler_n_entries(const fg_sampler *s);
int32_t fg_sampler_fill_row(const fg_sampler *s, int32_t n_top, fg_sample_row *row,
                            fg_sample_entry *ent, int32_t cap);
// Applies a row's result: the RNG advances when the op used the draw. The token is not
// accepted into the history (fg_sampler_accept does that, as after fg_sampler_sample).
void fg_sampler_commit(fg_sampler *s, const fg_sample_result *res);
// Resets the history and the RNG (to the seed).
void fg_sampler_reset(fg_sampler *s);
// The logits after the logit bias and the penalties (out[n_vocab]); what sampling starts from.
// Tests, debugging.
void fg_sampler_penalize(const fg_sampler *s, const float *logits, float *out);

// ---- engine: requests, continuous batching
typedef struct fg_engine fg_engine;

typedef struct fg_engine_opts {
    int32_t n_ctx;            // max tokens (prompt + generated) per sequence; 0: model's n_ctx_train capped at 4096
    int32_t max_seqs;         // running sequences at once (--parallel); 0: 16;
                              // <= the model's max_seqs (fg_model_opts)
    int32_t page_size;        // tokens per KV page; 0: 16
    int32_t n_pages;          // KV pages in the pool; 0: enough for max_seqs * n_ctx
    int32_t max_batch_tokens; // per-step token budget (decode + prefill chunks); 0: 512;
                              // <= the model's max_batch_tokens (fg_model_opts)
    int32_t queue_cap;        // waiting requests before FG_ERR_CAPACITY; 0: 256
    uint32_t kv_type;         // FG_TYPE_F16 (0 means F16 too), FG_TYPE_F32 or FG_TYPE_Q8_0
    // prefix cache (issue 13): a request maps the cached KV pages of its prompt's longest
    // cached prefix and prefills the rest; off by default here, on by default in forge serve
    bool prefix_cache;
    fg_kv_hash_fn prefix_hash; // test hook: the page hash (NULL: fg_kv_hash_tokens)
    bool check_pages;          // tests: fg_kv_pages_check after every step (stats.page_check_failures)
    // When a step's events (detokenization, stop strings, callbacks) are emitted: 0 (default)
    // after the next step is submitted when the backend runs steps asynchronously (a GPU: the
    // host work overlaps the device; a request ending on a stop string costs the next step one
    // row, dropped), before it otherwise (the CPU computes inside the submit); 1: always
    // after, -1: always before (tests run both orders on the CPU).
    int32_t defer_events;
} fg_engine_opts;

#define FG_MAX_STOP 8

typedef struct fg_request_params {
    const int32_t *prompt;   // tokens (copied at submit)
    int32_t n_prompt;        // >= 1
    int32_t max_tokens;      // >= 0, n_prompt + max_tokens <= n_ctx (clamp before submitting);
                             // 0 with echo: score the prompt only; 0 without: DONE at once
    fg_sampling sampling;
    const char *stop[FG_MAX_STOP]; // stop strings (copied); NULL-terminated or n_stop
    int32_t n_stop;
    bool ignore_eos;
    int32_t logprobs;        // -1: none; 0..FG_MAX_TOP_LOGPROBS: chosen token's logprob + top-N
    bool echo_logprobs;      // also report logprobs of the prompt tokens (positions 1..), with
                             // top-`logprobs` alternatives each
} fg_request_params;

typedef enum fg_finish_reason {
    FG_FINISH_NONE = 0,
    FG_FINISH_STOP,      // EOS/EOT or a stop string
    FG_FINISH_LENGTH,    // max_tokens or context full
    FG_FINISH_CANCELLED,
    FG_FINISH_ERROR,
} fg_finish_reason;

typedef enum fg_event_kind {
    FG_EVENT_PROMPT_LOGPROB, // echo: one per prompt token from the second on
    FG_EVENT_TOKEN,          // one generated token (text may be empty while UTF-8 is incomplete)
    FG_EVENT_DONE,           // last event of a request
} fg_event_kind;

// Log-softmax of a raw logits row: returns the logprob of `token` (-inf when out of range or
// NaN) and, when top is not NULL, the n_top (<= FG_MAX_TOP_LOGPROBS) best tokens, best first
// (ties to the lower id) in top[0..*n_top_out). NaN logits count as -inf.
float fg_logprobs(const float *logits, int32_t n_vocab, int32_t token, int32_t n_top,
                  fg_top_logprob *top, int32_t *n_top_out);

typedef struct fg_event {
    fg_event_kind kind;
    uint64_t request_id;
    int32_t token;           // TOKEN, PROMPT_LOGPROB
    float logprob;           // log-softmax of the token (when logprobs >= 0)
    int32_t n_top;
    fg_top_logprob top[FG_MAX_TOP_LOGPROBS];
    const char *text;        // TOKEN: UTF-8 delta to append (stop strings held back/removed);
                             // DONE: held-back text flushed at the end (usually empty)
    size_t text_len;
    fg_finish_reason finish; // DONE
    fg_status status;        // DONE: FG_OK or the failure (message in error)
    const char *error;       // DONE with a failure
    int32_t n_prompt_tokens; // DONE: usage
    int32_t n_gen_tokens;    // DONE: usage (an EOG token counts; it gets no TOKEN event)
    double t_prompt_s;       // DONE: time from first scheduling to first token
    double t_gen_s;          // DONE: time spent generating after the first token
    int32_t n_cached_tokens; // DONE: prompt tokens whose KV came from the prefix cache
} fg_event;

// Called on the scheduler thread: must not block (copy what you need and return).
typedef void (*fg_event_fn)(void *user, const fg_event *ev);

typedef enum fg_request_state {
    FG_REQ_QUEUED,
    FG_REQ_RUNNING,
    FG_REQ_FINISHED,
    FG_REQ_CANCELLED,
    FG_REQ_FAILED,
} fg_request_state;

typedef struct fg_request_info {
    uint64_t id;
    fg_request_state state;
    int32_t n_prompt_tokens;
    int32_t n_gen_tokens;
} fg_request_info;

typedef struct fg_engine_stats {
    uint64_t requests_total, requests_finished, requests_cancelled, requests_failed;
    uint64_t tokens_in, tokens_out;
    int32_t queue_depth, running;
    int32_t kv_pages_used, kv_pages_free;
    uint64_t steps, preemptions;
    // histograms for /metrics (cumulative counts per bucket upper bound, seconds)
    int32_t n_buckets;
    const double *bucket_le;           // [n_buckets]
    uint64_t ttft_counts[16];          // time to first token
    double ttft_sum;
    uint64_t ttft_count;
    uint64_t itl_counts[16];           // inter-token latency
    double itl_sum;
    uint64_t itl_count;
    // prefix cache (zeros when off). Every admission (a preempted request's too) looks its
    // tokens up: hit tokens are mapped from the cache, miss tokens are computed.
    uint64_t prefix_lookups, prefix_hits; // admissions; those that mapped >= 1 page
    uint64_t prefix_hit_tokens, prefix_miss_tokens;
    uint64_t prefix_evictions;            // cached pages dropped to make room
    int32_t prefix_pages, prefix_idle_pages; // cached pages; of those, held by no sequence
    // Where the scheduler thread's time goes, summed over steps (seconds; bench_engine prints
    // them per step). plan: admission, prefill chunks, pages, prefix lookups (overlaps the
    // device on an asynchronous backend); fill: from a step's wait returning to the next
    // submit (its tokens applied, the next batch and its sampling rows filled: the host time
    // the device waits for); submit: fg_model_submit (the CPU computes the step inside);
    // wait: fg_model_wait (the device computing); events: detokenization, stop strings,
    // callbacks.
    double t_plan_s, t_fill_s, t_submit_s, t_wait_s, t_events_s;
    uint64_t page_check_failures; // steps after which fg_kv_pages_check failed (check_pages)
} fg_engine_stats;

// Starts the scheduler thread. The model must outlive the engine.
fg_status fg_engine_create(fg_model *m, const fg_engine_opts *opts, fg_engine **out);
// Stops accepting, cancels what is left after `grace_s` seconds, joins the thread, frees.
void fg_engine_destroy(fg_engine *e, double grace_s);
// Validates and enqueues (prompt + max_tokens longer than n_ctx, bad token ids or sampling
// parameters: FG_ERR_INVALID_ARG; queue full: FG_ERR_CAPACITY; shutting down:
// FG_ERR_CANCELLED; after a device error: FG_ERR_DEVICE). On success the callback will get
// exactly one DONE event for the id. The callback must not call fg_engine_destroy.
fg_status fg_engine_submit(fg_engine *e, const fg_request_params *p, fg_event_fn fn, void *user,
                           uint64_t *id);
// Cancels a queued or running request (its pages are freed at the next step); DONE with
// FG_FINISH_CANCELLED follows. A request already over: FG_OK, nothing happens.
// FG_ERR_INVALID_ARG for an unknown id.
fg_status fg_engine_cancel(fg_engine *e, uint64_t id);
// State of a request (remembered for a while after it ends). FG_ERR_INVALID_ARG if unknown.
fg_status fg_engine_request_info(fg_engine *e, uint64_t id, fg_request_info *out);
void fg_engine_get_stats(fg_engine *e, fg_engine_stats *out);
int32_t fg_engine_n_ctx(const fg_engine *e);
int32_t fg_engine_kv_tokens(const fg_engine *e); // KV pool capacity in tokens
uint64_t fg_engine_kv_bytes(const fg_engine *e); // and in backend bytes
// The root of the prefix cache's hash chains: a 64-bit digest of the model (architecture,
// metadata scalars and strings, tensor table, 3 x 64 sampled bytes of every tensor's data).
uint64_t fg_engine_model_identity(const fg_model *m);

#ifdef __cplusplus
}
#endif

#endif // FORGE_ENGINE_H
