/* C code in the x86 test kernel calling ccdma through its C interface (ffi/include/ccdma.h, the
 * ccdma-ffi crate linked into the kernel), over the kernel's own platform: the table of sharing and
 * translation calls the kernel hands in (its page ledger decides what is shared). Compiled
 * freestanding by build.rs: no libc, no printf; results go back in `struct c_result`, and the Rust
 * side prints the check `ffi.c_driver`.
 *
 * A "device" here is this file reading and writing at the bus addresses ccdma returns (the layer has
 * no IOMMU: a bus address is the shared physical address), after asking the kernel whether the whole
 * range is shared RAM. */
#include <stddef.h>
#include <stdint.h>

#include "ccdma.h"

/* What the kernel lends the C code. */
struct c_memory {
    uint64_t pool_phys;     /* private RAM for the pool (page aligned) */
    size_t pool_len;
    uint8_t *bufs;          /* private driver buffers */
    size_t bufs_len;
    uint64_t coherent_phys; /* two private pages for a coherent buffer */
    /* 1 when [bus, bus + len) is RAM the ledger says is shared (what a device may reach). */
    int (*shared)(uint64_t bus, size_t len);
    /* The CPU's pointer to physical memory. */
    uint8_t *(*cpu_of)(uint64_t phys, size_t len);
};

struct c_result {
    unsigned maps;        /* streaming maps checked byte for byte */
    unsigned segments;    /* DMA segments of the list */
    unsigned checks;      /* individual conditions checked */
    unsigned failures;    /* conditions that did not hold */
    unsigned first_line;  /* line of the first failure, 0 if none */
    int first_code;       /* the ccdma code at the first failure, if it was a call */
};

static struct c_result *res;

static void expect(int ok, unsigned line, int code) {
    res->checks++;
    if (ok) return;
    if (res->failures++ == 0) {
        res->first_line = line;
        res->first_code = code;
    }
}
#define EXPECT(cond) expect((cond) != 0, __LINE__, 0)
#define CALL(call)                                                                                     \
    do {                                                                                               \
        int rc_ = (call);                                                                              \
        expect(rc_ == CCDMA_OK, __LINE__, rc_);                                                        \
    } while (0)

static const struct c_memory *mem;

/* The device reads or writes len bytes at bus: refused unless the ledger says they are shared. */
static int device(uint64_t bus, void *data, size_t len, int write) {
    if (!mem->shared(bus, len)) return -1;
    uint8_t *p = mem->cpu_of(bus, len);
    if (p == NULL) return -1;
    uint8_t *d = data;
    for (size_t i = 0; i < len; i++) {
        if (write)
            p[i] = d[i];
        else
            d[i] = p[i];
    }
    return 0;
}

static void fill(uint8_t *b, size_t len, unsigned seed) {
    for (size_t i = 0; i < len; i++) b[i] = (uint8_t)(seed * 31u + i * 7u + (i >> 8));
}
static int same(const uint8_t *a, const uint8_t *b, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static _Alignas(CCDMA_LAYER_ALIGN) uint8_t layer_mem[CCDMA_LAYER_SIZE];
static _Alignas(CCDMA_SLOT_META_ALIGN) uint8_t meta[64 * CCDMA_SLOT_META_SIZE];
static _Alignas(CCDMA_DEVICE_ALIGN) uint8_t dev_mem[2][CCDMA_DEVICE_SIZE];
static _Alignas(CCDMA_SG_ENTRY_ALIGN) uint8_t sg_mem[3 * CCDMA_SG_ENTRY_SIZE];
static _Alignas(CCDMA_COHERENT_ALIGN) uint8_t coh_mem[CCDMA_COHERENT_SIZE];
static uint8_t want[4096], got[4096];

int c_driver_check(const struct ccdma_platform *platform, const struct c_memory *m, struct c_result *out) {
    res = out;
    mem = m;
    *out = (struct c_result){0};
    EXPECT(m->pool_len <= 64 * CCDMA_SLOT_SIZE && m->bufs_len >= 3 * 4096);

    CALL(ccdma_layer_init(layer_mem, sizeof layer_mem, platform));
    struct ccdma_layer *layer = (struct ccdma_layer *)layer_mem;
    EXPECT(ccdma_add_pool(layer, m->pool_phys, m->pool_len, meta, sizeof meta) == 0);
    EXPECT(m->shared(m->pool_phys, m->pool_len)); /* the pool is shared once, here */

    unsigned masks[2] = {32, 64};
    struct ccdma_device *devs[2];
    for (int d = 0; d < 2; d++) {
        CALL(ccdma_attach(layer, dev_mem[d], sizeof dev_mem[d], 0xC0 + d, masks[d]));
        devs[d] = (struct ccdma_device *)dev_mem[d];
    }

    /* Streaming: both devices, every direction; the buffer itself stays private. */
    int dirs[3] = {CCDMA_TO_DEVICE, CCDMA_FROM_DEVICE, CCDMA_BIDIRECTIONAL};
    size_t len = 3000;
    uint8_t *buf = m->bufs;
    for (int d = 0; d < 2; d++) {
        for (int k = 0; k < 3; k++) {
            unsigned seed = (unsigned)(d * 3 + k);
            fill(buf, len, seed);
            for (size_t i = 0; i < len; i++) want[i] = buf[i];
            uint64_t bus = 0;
            CALL(ccdma_map(layer, devs[d], buf, len, dirs[k], &bus));
            uint64_t buf_phys = 0;
            EXPECT(platform->virt_to_phys(platform->ctx, buf, len, &buf_phys) == 0);
            EXPECT(device(buf_phys, got, 1, 0) != 0); /* the original stays private */
            if (dirs[k] != CCDMA_FROM_DEVICE)
                EXPECT(device(bus, got, len, 0) == 0 && same(got, want, len));
            else
                EXPECT(device(bus, got, len, 0) == 0 && got[0] == 0 && got[len - 1] == 0);
            if (dirs[k] != CCDMA_TO_DEVICE) {
                fill(want, len, seed + 100);
                EXPECT(device(bus, want, len, 1) == 0);
            }
            CALL(ccdma_unmap(layer, devs[d], bus, len, dirs[k]));
            EXPECT(same(buf, want, len));
            res->maps++;
        }
    }

    /* Attributes and syncs: the device's bytes reach the buffer only at the explicit sync. */
    uint64_t bus = 0;
    for (size_t i = 0; i < len; i++) buf[i] = 0x33;
    fill(want, 64, 7);
    CALL(ccdma_map_attrs(layer, devs[0], buf, len, CCDMA_FROM_DEVICE, CCDMA_ATTR_SKIP_CPU_SYNC, &bus));
    EXPECT(device(bus, want, 64, 1) == 0);
    EXPECT(buf[0] == 0x33);
    CALL(ccdma_sync_for_cpu(layer, devs[0], bus, 0, 64, CCDMA_FROM_DEVICE));
    EXPECT(same(buf, want, 64));
    CALL(ccdma_unmap_attrs(layer, devs[0], bus, len, CCDMA_FROM_DEVICE, CCDMA_ATTR_SKIP_CPU_SYNC));
    EXPECT(ccdma_map_attrs(layer, devs[0], buf, len, CCDMA_TO_DEVICE, 64, &bus) == CCDMA_ERR_INVALID);

    /* A list of three buffers from the device, one byte stream across its segments. */
    size_t lens[3] = {100, 2500, 700}, total = 3300;
    struct ccdma_sg_in in[3] = {{buf, lens[0]}, {buf + 4096, lens[1]}, {buf + 8192, lens[2]}};
    struct ccdma_segment segs[3];
    size_t nsegs = 0, off = 0;
    fill(want, total, 9);
    CALL(ccdma_map_sg(layer, devs[1], in, 3, CCDMA_FROM_DEVICE, sg_mem, sizeof sg_mem, segs, &nsegs));
    for (size_t i = 0; i < nsegs && i < 3; i++) {
        EXPECT(off + segs[i].len <= total && device(segs[i].bus, want + off, segs[i].len, 1) == 0);
        off += segs[i].len;
    }
    EXPECT(off == total);
    CALL(ccdma_sync_sg_for_cpu(layer, devs[1], sg_mem, 3, CCDMA_FROM_DEVICE));
    EXPECT(same(in[0].ptr, want, lens[0]));
    CALL(ccdma_unmap_sg(layer, devs[1], sg_mem, 3, CCDMA_FROM_DEVICE));
    EXPECT(same(in[1].ptr, want + lens[0], lens[1]) && same(in[2].ptr, want + lens[0] + lens[1], lens[2]));
    res->segments = (unsigned)nsegs;

    /* A coherent buffer: shared while allocated, private again after the free. */
    void *cpu = NULL;
    uint64_t cbus = 0;
    CALL(ccdma_alloc_coherent(layer, devs[0], m->coherent_phys, 2, coh_mem, sizeof coh_mem, &cpu, &cbus));
    EXPECT(m->shared(cbus, 2 * 4096));
    fill(want, 64, 5);
    EXPECT(device(cbus + 4096, want, 64, 1) == 0 && cpu != NULL && same((uint8_t *)cpu + 4096, want, 64));
    CALL(ccdma_free_coherent(layer, devs[0], (struct ccdma_coherent *)coh_mem));
    EXPECT(!m->shared(m->coherent_phys, 4096) && !m->shared(m->coherent_phys + 4096, 4096));
    /* Handle rules: a second free is misuse and changes nothing (the pages stay private). */
    EXPECT(ccdma_free_coherent(layer, devs[0], (struct ccdma_coherent *)coh_mem) == CCDMA_ERR_MISUSE);
    EXPECT(!m->shared(m->coherent_phys, 4096));

    /* Teardown: refused while a device is busy, then the pool is private again. */
    CALL(ccdma_map(layer, devs[1], buf, 64, CCDMA_TO_DEVICE, &bus));
    EXPECT(ccdma_layer_fini(layer) == CCDMA_ERR_BUSY);
    CALL(ccdma_unmap(layer, devs[1], bus, 64, CCDMA_TO_DEVICE));
    for (int d = 0; d < 2; d++) CALL(ccdma_detach(layer, devs[d]));
    EXPECT(ccdma_detach(layer, devs[0]) == CCDMA_ERR_MISUSE);                            /* detach twice */
    EXPECT(ccdma_map(layer, devs[1], buf, 64, CCDMA_TO_DEVICE, &bus) == CCDMA_ERR_MISUSE); /* detached */
    CALL(ccdma_layer_fini(layer));
    EXPECT(ccdma_layer_fini(layer) == CCDMA_ERR_MISUSE);                                 /* fini twice */
    EXPECT(!m->shared(m->pool_phys, 4096) && !m->shared(m->pool_phys + m->pool_len - 4096, 4096));
    return (int)res->failures;
}
