"""hostile_gguf.py - builds small valid and hostile GGUF files for the reader's tests.

A tiny GGUF encoder (Builder), a minimal reader (read_gguf) used to check synth output, and
cases(): (name, bytes) pairs of malformed files that `forge info` must refuse with exit
status 1 and one line on stderr. Run as a script to write the cases into a directory:
    python3 tests/py/hostile_gguf.py OUTDIR
"""
import os
import struct
import sys

# value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
              BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}
# weight type id -> (block elements, block bytes)
TYPE_GEOM = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
             8: (32, 34), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
             14: (256, 210), 30: (1, 2), 39: (32, 17)}


def enc_str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def enc_value(vtype, v):
    """Encodes a value (without its type id). Arrays: v = (elem_type, [elements])."""
    if vtype in SCALAR_FMT:
        return struct.pack(SCALAR_FMT[vtype], v)
    if vtype == STR:
        return enc_str(v)
    et, elems = v
    out = struct.pack("<IQ", et, len(elems))
    for e in elems:
        out += enc_value(et, e)
    return out


class Builder:
    def __init__(self, version=3, alignment=32):
        self.version = version
        self.alignment = alignment
        self.kvs = []      # (key bytes, type, encoded value)
        self.tensors = []  # dicts: name, dims, type, data, offset (None = automatic)

    def kv(self, key, vtype, v):
        self.kvs.append((key, vtype, enc_value(vtype, v)))
        return self

    def kv_raw(self, key, vtype, raw):
        self.kvs.append((key, vtype, raw))
        return self

    def tensor(self, name, dims, ttype=0, data=None, offset=None):
        if data is None:
            bs, bb = TYPE_GEOM.get(ttype, (1, 4))
            n = 1
            for d in dims:
                n *= d
            data = bytes((i * 7 + 3) & 0xFF for i in range(max(0, n // bs * bb)))
        self.tensors.append(dict(name=name, dims=dims, type=ttype, data=data, offset=offset))
        return self

    def build(self, n_tensors=None, n_kv=None):
        a = self.alignment
        out = b"GGUF" + struct.pack("<I", self.version)
        out += struct.pack("<QQ", len(self.tensors) if n_tensors is None else n_tensors,
                           len(self.kvs) if n_kv is None else n_kv)
        for key, vtype, raw in self.kvs:
            out += enc_str(key) + struct.pack("<I", vtype) + raw
        off = 0
        offsets = []
        for t in self.tensors:
            o = off if t["offset"] is None else t["offset"]
            offsets.append(o)
            out += enc_str(t["name"]) + struct.pack("<I", len(t["dims"]))
            for d in t["dims"]:
                out += struct.pack("<q", d)
            out += struct.pack("<IQ", t["type"], o)
            off += (len(t["data"]) + a - 1) // a * a
        out += b"\0" * ((-len(out)) % a)
        data = bytearray()
        for t, o in zip(self.tensors, offsets):
            if t["offset"] is not None:
                continue
            data += b"\0" * (o - len(data)) + t["data"]
        data += b"\0" * ((-len(data)) % a)
        return bytes(out) + bytes(data)


def valid_builder(version=3):
    b = Builder(version)
    b.kv("general.architecture", STR, "llama")
    b.kv("general.name", STR, "hostile base")
    b.kv("t.u8", U8, 7).kv("t.i8", I8, -7).kv("t.u16", U16, 700).kv("t.i16", I16, -700)
    b.kv("t.u32", U32, 70000).kv("t.i32", I32, -70000).kv("t.f32", F32, 0.5)
    b.kv("t.bool", BOOL, 1).kv("t.u64", U64, 1 << 40).kv("t.i64", I64, -(1 << 40))
    b.kv("t.f64", F64, 2.5)
    b.kv("tokenizer.ggml.tokens", ARR, (STR, ["<unk>", "<s>", "</s>", "a", "b"]))
    b.kv("a.f32", ARR, (F32, [1.0, 2.0, 3.0]))
    b.kv("a.nested", ARR, (ARR, [(U32, [1, 2]), (STR, ["x"]), (U8, [])]))
    b.tensor("token_embd.weight", [32, 5], 0)
    b.tensor("blk.0.attn_norm.weight", [32], 0)
    b.tensor("blk.0.attn_q.weight", [32, 2], 2)
    return b


def valid_small(version=3):
    return valid_builder(version).build()


def cases():
    """(name, bytes) of files the reader must refuse."""
    out = []
    good = valid_small()

    def add(name, data):
        out.append((name, data))

    add("empty", b"")
    add("short_magic", b"GG")
    add("wrong_magic", b"GGML" + good[4:])
    add("version_0", good[:4] + struct.pack("<I", 0) + good[8:])
    add("version_1", good[:4] + struct.pack("<I", 1) + good[8:])
    add("version_99", good[:4] + struct.pack("<I", 99) + good[8:])
    add("big_endian_v3", good[:4] + struct.pack(">I", 3) + good[8:])
    add("kv_count_2_62", valid_builder().build(n_kv=1 << 62))
    add("kv_count_too_many", valid_builder().build(n_kv=20))
    add("tensor_count_2_62", valid_builder().build(n_tensors=1 << 62))
    add("tensor_count_max", valid_builder().build(n_tensors=(1 << 64) - 1))
    add("tensor_count_too_many", valid_builder().build(n_tensors=4))

    def with_kv(key, vtype, raw):
        b = valid_builder()
        b.kv_raw(key, vtype, raw)
        return b.build()

    add("key_len_past_end", Builder().kv_raw(b"", 0, b"").build()[:24] + struct.pack("<Q", 1 << 40) + b"x" * 40)
    add("key_len_max", Builder().build(n_kv=1)[:24] + struct.pack("<Q", (1 << 64) - 1) + b"x" * 40)
    add("str_value_past_end", with_kv(b"s", STR, struct.pack("<Q", 1 << 33) + b"abc"))
    add("str_value_max", with_kv(b"s", STR, struct.pack("<Q", (1 << 64) - 1) + b"abc"))
    add("unknown_value_type_13", with_kv(b"v", 13, b"\0" * 8))
    add("unknown_value_type_max", with_kv(b"v", 0xFFFFFFFF, b"\0" * 8))
    add("unknown_array_elem_type", with_kv(b"v", ARR, struct.pack("<IQ", 13, 1) + b"\0" * 8))
    add("array_len_2_63", with_kv(b"v", ARR, struct.pack("<IQ", U8, 1 << 63) + b"\0" * 8))
    add("array_len_max_u64", with_kv(b"v", ARR, struct.pack("<IQ", U64, (1 << 64) - 1) + b"\0" * 8))
    add("str_array_len_2_60", with_kv(b"v", ARR, struct.pack("<IQ", STR, 1 << 60) + b"\0" * 8))
    add("str_array_elem_past_end", with_kv(b"v", ARR, struct.pack("<IQQ", STR, 2, 1) + b"a" + struct.pack("<Q", 1 << 50)))
    nested = b""
    for _ in range(10):
        nested += struct.pack("<IQ", ARR, 1)
    add("nested_too_deep", with_kv(b"v", ARR, nested + struct.pack("<IQ", U8, 0)))
    deep = struct.pack("<IQ", ARR, 1) * 5000 + struct.pack("<IQ", U8, 0)
    add("nested_very_deep", with_kv(b"v", ARR, deep))
    add("nested_array_len_huge", with_kv(b"v", ARR, struct.pack("<IQ", ARR, 1 << 62) + b"\0" * 24))
    add("duplicate_key", valid_builder().kv("general.name", STR, "again").build())
    add("key_with_nul", with_kv(b"a\0b", U8, b"\1"))

    def align_case(vtype, v):
        b = valid_builder()
        b.kv("general.alignment", vtype, v)
        return b.build()

    add("alignment_0", align_case(U32, 0))
    add("alignment_3", align_case(U32, 3))
    add("alignment_48", align_case(U32, 48))
    add("alignment_u64", align_case(U64, 32))
    add("alignment_string", align_case(STR, "32"))
    add("alignment_2_31", align_case(U32, 1 << 31))

    def tensor_case(**kw):
        b = valid_builder()
        name = kw.pop("name", "bad.weight")
        dims = kw.pop("dims", [32])
        ttype = kw.pop("ttype", 0)
        b.tensor(name, dims, ttype, data=kw.pop("data", b"\0" * 128), offset=kw.pop("offset", None))
        return b.build()

    add("tensor_type_4", tensor_case(ttype=4))
    add("tensor_type_5", tensor_case(ttype=5))
    add("tensor_type_77", tensor_case(ttype=77))
    add("tensor_type_40", tensor_case(ttype=40))
    add("tensor_type_q8_k", tensor_case(ttype=15))
    add("tensor_type_max", tensor_case(ttype=0xFFFFFFFF))
    add("tensor_ndims_0", tensor_case(dims=[]))
    add("tensor_ndims_5", tensor_case(dims=[1, 1, 1, 1, 1]))
    add("tensor_negative_dim", tensor_case(dims=[32, -1]))
    add("tensor_min_dim", tensor_case(dims=[-(1 << 63)]))
    add("tensor_dims_overflow", tensor_case(dims=[1 << 32, 1 << 32]))
    add("tensor_dims_overflow_4d", tensor_case(dims=[1 << 20, 1 << 20, 1 << 20, 1 << 20]))
    add("tensor_bytes_huge", tensor_case(dims=[1 << 40, 1 << 20], ttype=0))
    add("tensor_row_not_block", tensor_case(dims=[33], ttype=2))
    add("tensor_offset_past_end", tensor_case(offset=1 << 20))
    add("tensor_offset_misaligned", tensor_case(offset=8))
    add("tensor_offset_overflow", tensor_case(offset=(1 << 64) - 32))
    add("tensor_data_past_end", valid_small()[:-40])
    add("duplicate_tensor_name", tensor_case(name="token_embd.weight"))
    add("tensor_name_nul", tensor_case(name=b"bad\0name"))
    add("tensor_name_len_huge", Builder().tensor("x", [4]).build()[:24] + struct.pack("<Q", 1 << 62) + b"\0" * 64)
    return out


def truncations(data, step=1):
    """Every proper prefix (step bytes apart) of data."""
    return [data[:k] for k in range(0, len(data), step)]


def read_gguf(path):
    """Minimal reader for tests: returns (kv dict, tensors list of dicts with bytes)."""
    with open(path, "rb") as f:
        d = f.read()
    assert d[:4] == b"GGUF"
    version, n_t, n_kv = struct.unpack_from("<IQQ", d, 4)
    pos = 24

    def rd_str(p):
        (n,) = struct.unpack_from("<Q", d, p)
        return d[p + 8:p + 8 + n], p + 8 + n

    def rd_val(t, p):
        if t in SCALAR_FMT:
            (v,) = struct.unpack_from(SCALAR_FMT[t], d, p)
            return v, p + struct.calcsize(SCALAR_FMT[t])
        if t == STR:
            s, p = rd_str(p)
            return s.decode("utf-8", "replace"), p
        et, n = struct.unpack_from("<IQ", d, p)
        p += 12
        vals = []
        for _ in range(n):
            v, p = rd_val(et, p)
            vals.append(v)
        return vals, p

    kv = {}
    for _ in range(n_kv):
        k, pos = rd_str(pos)
        (t,) = struct.unpack_from("<I", d, pos)
        v, pos = rd_val(t, pos + 4)
        kv[k.decode()] = v
    tensors = []
    for _ in range(n_t):
        name, pos = rd_str(pos)
        (nd,) = struct.unpack_from("<I", d, pos)
        dims = list(struct.unpack_from("<%dq" % nd, d, pos + 4))
        ttype, off = struct.unpack_from("<IQ", d, pos + 4 + 8 * nd)
        pos += 4 + 8 * nd + 12
        tensors.append(dict(name=name.decode(), dims=dims, type=ttype, offset=off))
    align = kv.get("general.alignment", 32)
    base = (pos + align - 1) // align * align
    for t in tensors:
        bs, bb = TYPE_GEOM[t["type"]]
        n = 1
        for x in t["dims"]:
            n *= x
        size = n // bs * bb
        t["data"] = d[base + t["offset"]:base + t["offset"] + size]
        t["size"] = size
    return kv, tensors


def read_typed(path):
    """Reader that keeps value types, for rewriting a model: returns (kvs, tensors) where kvs
    is a list of [key, vtype, value] (arrays as (elem_type, [values]), strings as bytes) and
    tensors a list of dicts name, dims, type, data; rebuild(kvs, tensors) writes them back."""
    with open(path, "rb") as f:
        d = f.read()
    assert d[:4] == b"GGUF"
    _, n_t, n_kv = struct.unpack_from("<IQQ", d, 4)
    pos = 24

    def rd_str(p):
        (n,) = struct.unpack_from("<Q", d, p)
        return d[p + 8:p + 8 + n], p + 8 + n

    def rd_val(t, p):
        if t in SCALAR_FMT:
            (v,) = struct.unpack_from(SCALAR_FMT[t], d, p)
            return v, p + struct.calcsize(SCALAR_FMT[t])
        if t == STR:
            return rd_str(p)
        et, n = struct.unpack_from("<IQ", d, p)
        p += 12
        vals = []
        for _ in range(n):
            v, p = rd_val(et, p)
            vals.append(v)
        return (et, vals), p

    kvs = []
    for _ in range(n_kv):
        k, pos = rd_str(pos)
        (t,) = struct.unpack_from("<I", d, pos)
        v, pos = rd_val(t, pos + 4)
        kvs.append([k.decode(), t, v])
    align = 32
    for k, t, v in kvs:
        if k == "general.alignment":
            align = v
    tensors = []
    for _ in range(n_t):
        name, pos = rd_str(pos)
        (nd,) = struct.unpack_from("<I", d, pos)
        dims = list(struct.unpack_from("<%dq" % nd, d, pos + 4))
        ttype, off = struct.unpack_from("<IQ", d, pos + 4 + 8 * nd)
        pos += 4 + 8 * nd + 12
        tensors.append(dict(name=name.decode(), dims=dims, type=ttype, offset=off))
    base = (pos + align - 1) // align * align
    for t in tensors:
        bs, bb = TYPE_GEOM[t["type"]]
        n = 1
        for x in t["dims"]:
            n *= x
        o = base + t.pop("offset")
        t["data"] = d[o:o + n // bs * bb]
    return kvs, tensors


def rebuild(kvs, tensors):
    b = Builder()
    for k, t, v in kvs:
        b.kv(k, t, v)
    for t in tensors:
        b.tensor(t["name"], t["dims"], t["type"], data=t["data"])
    return b.build()


if __name__ == "__main__":
    outdir = sys.argv[1] if len(sys.argv) > 1 else "hostile"
    os.makedirs(outdir, exist_ok=True)
    for name, data in cases():
        with open(os.path.join(outdir, name + ".gguf"), "wb") as f:
            f.write(data)
    with open(os.path.join(outdir, "valid_small.gguf"), "wb") as f:
        f.write(valid_small())
    print("wrote %d files to %s" % (len(cases()) + 1, outdir))
