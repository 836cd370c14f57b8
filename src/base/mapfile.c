// mapfile.c - mmap a file read-only; a directory or special file is refused.
#define _POSIX_C_SOURCE 200809L
#include "base/mapfile.h"

#include "base/status.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

fg_status fg_mapfile_open(const char *path, fg_mapfile *out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return FG_FAIL(FG_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return FG_FAIL(FG_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return FG_FAIL(FG_ERR_IO, "%s: not a regular file", path);
    }
    fg_mapfile m = {0};
    m.size = (size_t)st.st_size;
    if (m.size > 0) {
        void *p = mmap(NULL, m.size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return FG_FAIL(FG_ERR_IO, "%s: cannot map %zu bytes: %s", path, m.size, strerror(e));
        }
        m.data = p;
    }
    close(fd);
    *out = m;
    return FG_OK;
}

void fg_mapfile_close(fg_mapfile *m) {
    if (m && m->data)
        munmap((void *)m->data, m->size);
    if (m) {
        m->data = NULL;
        m->size = 0;
    }
}
