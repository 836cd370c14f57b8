// progress.c - terminal progress bar (redrawn at most 10 times a second).
#define _POSIX_C_SOURCE 200809L
#include "base/progress.h"

#include "base/util.h"

#include <stdio.h>
#include <unistd.h>

static void draw(fg_progress *p) {
    double frac = p->total ? (double)p->done / (double)p->total : 1.0;
    if (frac > 1.0)
        frac = 1.0;
    int width = 30, fill = (int)(frac * width);
    char bar[32];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r%s [%s] %5.1f%% %6.1fs", p->label, bar, frac * 100.0,
            fg_time_s() - p->t_start);
    fflush(stderr);
}

void fg_progress_begin(fg_progress *p, const char *label, uint64_t total) {
    p->label = label;
    p->total = total;
    p->done = 0;
    p->t_start = p->t_last = fg_time_s();
    p->enabled = isatty(STDERR_FILENO) != 0;
    if (p->enabled)
        draw(p);
}

void fg_progress_update(fg_progress *p, uint64_t done) {
    p->done = done;
    if (!p->enabled)
        return;
    double t = fg_time_s();
    if (t - p->t_last < 0.1 && done < p->total)
        return;
    p->t_last = t;
    draw(p);
}

void fg_progress_end(fg_progress *p) {
    if (!p->enabled)
        return;
    p->done = p->total;
    draw(p);
    fputc('\n', stderr);
}
