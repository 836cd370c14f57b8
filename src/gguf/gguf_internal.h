// gguf_internal.h - what the GGUF reader shares with the writer inside src/gguf (not public):
// the raw bytes of a metadata value (for fg_gguf_writer_copy_kv) and the size of a value type.
// Who calls it: gguf_read.c, gguf_write.c.
#ifndef FG_GGUF_INTERNAL_H
#define FG_GGUF_INTERNAL_H

#include "forge/gguf.h"
#include "forge/types.h"

// Raw encoded bytes of value i (everything after the u32 value type), as found in the file.
void fg_gguf_kv_raw(const fg_gguf *g, int64_t i, const uint8_t **raw, uint64_t *len);

// Byte size of a fixed-size scalar type; 0 for STRING, ARRAY and unknown ids.
size_t fg_gguf_scalar_size(uint32_t t);

// Arrays nested deeper than this are refused by the reader.
#define FG_GGUF_MAX_ARRAY_DEPTH 4

#endif // FG_GGUF_INTERNAL_H
