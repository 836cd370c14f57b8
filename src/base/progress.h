// progress.h - a one-line progress bar on stderr when stderr is a terminal; silent otherwise.
// Used by long operations: loading, synth, perplexity, bench.
#ifndef FG_BASE_PROGRESS_H
#define FG_BASE_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct fg_progress {
    const char *label; // borrowed
    uint64_t total;
    uint64_t done;
    double t_start;
    double t_last;
    bool enabled;
} fg_progress;

void fg_progress_begin(fg_progress *p, const char *label, uint64_t total);
void fg_progress_update(fg_progress *p, uint64_t done);
void fg_progress_end(fg_progress *p);

#endif // FG_BASE_PROGRESS_H
