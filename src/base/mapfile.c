// mapfile.c - mmap a file read-only; a directory, FIFO or device is refused at once (opened
// without waiting, then fstat).
#define _POSIX_C_SOURCE 200809L
#include "base/mapfile.h"

#include "base/status.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *kind_of(mode_t m) {
    return S_ISDIR(m)    ? "a directory"
           : S_ISFIFO(m) ? "a FIFO"
           : S_ISCHR(m)  ? "a character device"
           : S_ISBLK(m)  ? "a block device"
           : S_ISSOCK(m) ? "a socket"
                         : "not a regular file";
}

fg_status fg_mapfile_open(const char *path, fg_mapfile *out) {
    // O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer; fstat decides
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
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
        return FG_FAIL(FG_ERR_IO, "%s: not a regular file (%s)", path, kind_of(st.st_mode));
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
