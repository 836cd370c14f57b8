// mapfile.h - read-only memory mapping of a whole file (model weights are views into it).
#ifndef FG_BASE_MAPFILE_H
#define FG_BASE_MAPFILE_H

#include "forge/status.h"

typedef struct fg_mapfile {
    const uint8_t *data; // the mapping (NULL for an empty file)
    size_t size;         // bytes
} fg_mapfile;

// Maps path read-only. Errors: FG_ERR_IO naming the path and the OS reason.
fg_status fg_mapfile_open(const char *path, fg_mapfile *out);
void fg_mapfile_close(fg_mapfile *m);

#endif // FG_BASE_MAPFILE_H
