/* ccdma from C: a confidential guest whose platform is written here.
 *
 * Guest RAM is two arenas: 1 MiB at 1 MiB (low) and 256 KiB at 4 GiB (high). Every page is private or
 * shared; share/unshare flip the state and refuse anything that is not whole pages of RAM in the state
 * they expect. The "device" reaches memory only through dev_access(), which refuses (and counts) any
 * byte that is not shared RAM below the device's mask. Then attributes, syncs and teardown; then the
 * same guest again behind an IOMMU written here (strict: entries per mapping), whose map() refuses any
 * entry that names private memory and whose devices reach memory only through entries with the right
 * permission. Then a trusted platform (TDISP) that accepts one device: that device maps private buffers
 * in place (and reaches private memory through trusted_access()), every other one keeps bouncing.
 * Exits non-zero on any error. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccdma.h"

#define PAGE 4096u
#define LOW_PHYS 0x100000ull
#define LOW_SIZE (1024u * 1024u)
#define HIGH_PHYS 0x100000000ull
#define HIGH_SIZE (256u * 1024u)
#define POOL_LEN (256u * 1024u)

static _Alignas(PAGE) uint8_t low_mem[LOW_SIZE];
static _Alignas(PAGE) uint8_t high_mem[HIGH_SIZE];
static uint8_t low_shared[LOW_SIZE / PAGE];
static uint8_t high_shared[HIGH_SIZE / PAGE];

struct region {
    uint64_t phys;
    uint64_t size;
    uint8_t *mem;
    uint8_t *shared;
};
static struct region regions[2] = {
    {LOW_PHYS, LOW_SIZE, low_mem, low_shared},
    {HIGH_PHYS, HIGH_SIZE, high_mem, high_shared},
};

static unsigned violations, shares, unshares, failures;

#define FAIL(...)                                                                                      \
    do {                                                                                               \
        printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                    \
        printf(__VA_ARGS__);                                                                           \
        printf("\n");                                                                                  \
        failures++;                                                                                    \
    } while (0)
#define CHECK(call)                                                                                    \
    do {                                                                                               \
        int rc_ = (call);                                                                              \
        if (rc_ != CCDMA_OK) FAIL("%s = %d (%s)", #call, rc_, ccdma_strerror(rc_));                   \
    } while (0)
/* A set-up step the rest of the demo builds on (a layer, its pools, its devices): on failure the
 * demo stops here, with a message and exit status 1, rather than run on with handles that were never
 * made (a library built with `small-layer` holds one pool: the second add_pool fails). */
#define STOP(...)                                                                                      \
    do {                                                                                               \
        FAIL(__VA_ARGS__);                                                                             \
        printf("STOPPED: a set-up step failed; %u failures\n", failures);                              \
        return 1;                                                                                      \
    } while (0)
#define REQUIRE(call)                                                                                  \
    do {                                                                                               \
        int rc_ = (call);                                                                              \
        if (rc_ != CCDMA_OK) STOP("%s = %d (%s)", #call, rc_, ccdma_strerror(rc_));                   \
    } while (0)

/* The region holding [phys, phys + len), or NULL. */
static struct region *find(uint64_t phys, uint64_t len) {
    for (int i = 0; i < 2; i++) {
        struct region *r = &regions[i];
        if (phys >= r->phys && len <= r->size && phys - r->phys <= r->size - len) return r;
    }
    return NULL;
}

static int flip(uint64_t phys, uint64_t pages, uint64_t *done, uint8_t from, uint8_t to) {
    *done = 0;
    struct region *r = find(phys, pages * PAGE);
    if (phys % PAGE != 0 || pages == 0 || r == NULL) {
        printf("  platform: refused %s of %llu pages at %#llx: not whole pages of RAM\n",
               to ? "share" : "unshare", (unsigned long long)pages, (unsigned long long)phys);
        violations++;
        return -1;
    }
    for (uint64_t i = 0; i < pages; i++) {
        uint8_t *st = &r->shared[(phys - r->phys) / PAGE + i];
        if (*st != from) {
            printf("  platform: page %#llx is already %s\n", (unsigned long long)(phys + i * PAGE),
                   to ? "shared" : "private");
            violations++;
            return -2;
        }
        *st = to;
        (*done)++;
    }
    return 0;
}

static int p_share(void *ctx, uint64_t phys, uint64_t pages, uint64_t *done) {
    (void)ctx;
    shares++;
    return flip(phys, pages, done, 0, 1);
}
static int p_unshare(void *ctx, uint64_t phys, uint64_t pages, uint64_t *done) {
    (void)ctx;
    unshares++;
    return flip(phys, pages, done, 1, 0);
}
static void *p_cpu_ptr(void *ctx, uint64_t phys, size_t len) {
    (void)ctx;
    struct region *r = find(phys, len);
    if (r == NULL) {
        printf("  platform: cpu_ptr of %#llx+%zu is not RAM\n", (unsigned long long)phys, len);
        violations++;
        return NULL;
    }
    return r->mem + (phys - r->phys);
}
static int p_virt_to_phys(void *ctx, const void *ptr, size_t len, uint64_t *phys) {
    (void)ctx;
    for (int i = 0; i < 2; i++) {
        struct region *r = &regions[i];
        uintptr_t p = (uintptr_t)ptr, b = (uintptr_t)r->mem;
        if (p >= b && len <= r->size && p - b <= r->size - len) {
            *phys = r->phys + (p - b);
            return 0;
        }
    }
    return -1;
}
static uint64_t p_ram_end(void *ctx) {
    (void)ctx;
    return HIGH_PHYS + HIGH_SIZE;
}

/* The device: DMA of len bytes at bus (bus == phys here: no IOMMU, identity encoding). Every byte must
 * be shared RAM at or below the mask. write != 0: device -> memory. */
static int dev_access(unsigned mask_bits, uint64_t bus, void *data, size_t len, int write) {
    uint64_t max = mask_bits >= 64 ? UINT64_MAX : ((1ull << mask_bits) - 1);
    struct region *r = find(bus, len);
    if (r == NULL || bus + len - 1 > max) {
        printf("  device(%u bits): access to %#llx+%zu outside RAM or mask\n", mask_bits,
               (unsigned long long)bus, len);
        violations++;
        return -1;
    }
    for (uint64_t p = bus / PAGE; p <= (bus + len - 1) / PAGE; p++) {
        if (!r->shared[p - r->phys / PAGE]) {
            printf("  device(%u bits): access to private page %#llx refused\n", mask_bits,
                   (unsigned long long)(p * PAGE));
            violations++;
            return -1;
        }
    }
    uint8_t *m = r->mem + (bus - r->phys);
    if (write)
        memcpy(m, data, len);
    else
        memcpy(data, m, len);
    return 0;
}

static int page_state(uint64_t phys) {
    struct region *r = find(phys, 1);
    return r ? r->shared[(phys - r->phys) / PAGE] : -1;
}

/* The IOMMU (second half of the demo): one window per device, 4 KiB pages, an entry table each.
 * map() refuses (and counts) entries that name anything but shared RAM or pages already mapped;
 * unmap() refuses pages not mapped. The device then reaches memory only through its entries. */
#define WIN_PAGES 4096u
struct window {
    uint32_t device;
    uint64_t start;
    uint64_t entries[WIN_PAGES];
};
static struct window windows[2] = {{20, 0x10000000ull, {0}}, {21, 0x10000000000ull, {0}}};
static unsigned iommu_maps, iommu_unmaps, iommu_blocked;

static struct window *window_of(uint32_t device) {
    for (int i = 0; i < 2; i++)
        if (windows[i].device == device) return &windows[i];
    return NULL;
}
/* The pages [bus, bus + npages) of the device's window, or NULL. */
static uint64_t *window_pages(uint32_t device, uint64_t bus, uint64_t npages) {
    struct window *w = window_of(device);
    if (w == NULL || bus % PAGE != 0 || bus < w->start || npages > WIN_PAGES ||
        (bus - w->start) / PAGE > WIN_PAGES - npages)
        return NULL;
    return &w->entries[(bus - w->start) / PAGE];
}
static unsigned live_entries(void) {
    unsigned n = 0;
    for (int i = 0; i < 2; i++)
        for (unsigned k = 0; k < WIN_PAGES; k++) n += windows[i].entries[k] != 0;
    return n;
}
static int io_window(void *ctx, uint32_t device, uint64_t *start, uint64_t *size, uint32_t *page_shift) {
    (void)ctx;
    struct window *w = window_of(device);
    if (w == NULL) return -1;
    *start = w->start;
    *size = (uint64_t)WIN_PAGES * PAGE;
    *page_shift = 12;
    return 0;
}
static int io_map(void *ctx, uint32_t device, uint64_t bus, uint64_t npages, const uint64_t *entries) {
    (void)ctx;
    iommu_maps++;
    uint64_t *pages = window_pages(device, bus, npages);
    if (pages == NULL) {
        printf("  iommu: map of %llu pages at %#llx outside device %u's window\n", (unsigned long long)npages,
               (unsigned long long)bus, device);
        violations++;
        return -1;
    }
    for (uint64_t i = 0; i < npages; i++) {
        uint64_t phys = entries[i] & ~(uint64_t)(PAGE - 1);
        if (entries[i] == 0) continue;
        if (pages[i] != 0 || page_state(phys) != 1 || (entries[i] & (PAGE - 1) & ~3ull) != 0) {
            printf("  iommu: entry %#llx at bus %#llx refused (%s)\n", (unsigned long long)entries[i],
                   (unsigned long long)(bus + i * PAGE),
                   pages[i] ? "already mapped" : page_state(phys) == 0 ? "private page" : "not RAM");
            violations++;
            for (uint64_t k = 0; k < i; k++) pages[k] = 0; /* nothing of the range translates */
            return -2;
        }
        pages[i] = entries[i];
    }
    return 0;
}
static int io_unmap(void *ctx, uint32_t device, uint64_t bus, uint64_t npages) {
    (void)ctx;
    iommu_unmaps++;
    uint64_t *pages = window_pages(device, bus, npages);
    if (pages == NULL) {
        violations++;
        return -1;
    }
    for (uint64_t i = 0; i < npages; i++) {
        if (pages[i] == 0) {
            printf("  iommu: unmap of unmapped bus page %#llx\n", (unsigned long long)(bus + i * PAGE));
            violations++;
        }
        pages[i] = 0;
    }
    return 0;
}
/* A device behind the IOMMU: every page of the access through an entry with the needed permission
 * (READ for the device reading memory). Returns -1 when the IOMMU blocks it. */
static int dev_access_iommu(uint32_t device, uint64_t bus, void *data, size_t len, int write) {
    for (size_t off = 0; off < len;) {
        uint64_t b = bus + off, *e = window_pages(device, b & ~(uint64_t)(PAGE - 1), 1);
        size_t n = PAGE - b % PAGE < len - off ? PAGE - b % PAGE : len - off;
        if (e == NULL || !(*e & (write ? CCDMA_IOMMU_WRITE : CCDMA_IOMMU_READ))) {
            iommu_blocked++;
            return -1;
        }
        uint64_t phys = (*e & ~(uint64_t)(PAGE - 1)) + b % PAGE;
        struct region *r = find(phys, n);
        if (r == NULL || page_state(phys) != 1) {
            printf("  iommu: entry for bus %#llx names private memory\n", (unsigned long long)b);
            violations++;
            return -1;
        }
        if (write)
            memcpy(r->mem + (phys - r->phys), (uint8_t *)data + off, n);
        else
            memcpy((uint8_t *)data + off, r->mem + (phys - r->phys), n);
        off += n;
    }
    return 0;
}

/* The trusted platform (last part of the demo): it accepts device TRUSTED_ID only. An accepted device
 * reaches any RAM, private pages too (TDISP with IDE); any other device goes through dev_access(). */
#define TRUSTED_ID 30u
static int trusted_accepted;
static unsigned accept_calls, revoke_calls;
static int t_accept(void *ctx, uint32_t device) {
    (void)ctx;
    accept_calls++;
    if (device != TRUSTED_ID) return -7; /* not bound to this guest */
    trusted_accepted = 1;
    return 0;
}
static int t_revoke(void *ctx, uint32_t device) {
    (void)ctx;
    revoke_calls++;
    if (device == TRUSTED_ID) trusted_accepted = 0;
    return 0;
}
static int trusted_access(uint32_t device, uint64_t bus, void *data, size_t len, int write) {
    if (device != TRUSTED_ID || !trusted_accepted) return dev_access(64, bus, data, len, write);
    struct region *r = find(bus, len);
    if (r == NULL) {
        printf("  trusted device: access to %#llx+%zu outside RAM\n", (unsigned long long)bus, len);
        violations++;
        return -1;
    }
    if (write)
        memcpy(r->mem + (bus - r->phys), data, len);
    else
        memcpy(data, r->mem + (bus - r->phys), len);
    return 0;
}
static int in_pool(uint64_t bus, size_t len) {
    return (bus >= LOW_PHYS && bus + len <= LOW_PHYS + POOL_LEN) || (bus >= HIGH_PHYS && bus + len <= HIGH_PHYS + POOL_LEN);
}
static const char *path_of(const struct ccdma_layer *layer, const struct ccdma_device *dev) {
    return ccdma_path_name(ccdma_device_path(layer, dev));
}

/* Driver memory: private pages of the low arena above the pool. */
static uint64_t next_private = LOW_PHYS + 512u * 1024u;
static uint8_t *alloc_private(size_t len, uint64_t *phys) {
    uint64_t p = next_private;
    next_private += (len + PAGE - 1) / PAGE * PAGE;
    if (phys) *phys = p;
    return low_mem + (p - LOW_PHYS);
}

static void fill(uint8_t *b, size_t len, unsigned seed) {
    for (size_t i = 0; i < len; i++) b[i] = (uint8_t)(seed * 31u + i * 7u + (i >> 8));
}

static _Alignas(CCDMA_LAYER_ALIGN) uint8_t layer_mem[CCDMA_LAYER_SIZE];
static _Alignas(CCDMA_SLOT_META_ALIGN) uint8_t meta_low[POOL_LEN / CCDMA_SLOT_SIZE * CCDMA_SLOT_META_SIZE];
static _Alignas(CCDMA_SLOT_META_ALIGN) uint8_t meta_high[POOL_LEN / CCDMA_SLOT_SIZE * CCDMA_SLOT_META_SIZE];
static _Alignas(CCDMA_DEVICE_ALIGN) uint8_t dev_mem[3][CCDMA_DEVICE_SIZE];
static _Alignas(CCDMA_SG_ENTRY_ALIGN) uint8_t sg_mem[3 * CCDMA_SG_ENTRY_SIZE];
static _Alignas(CCDMA_COHERENT_ALIGN) uint8_t coh_mem[CCDMA_COHERENT_SIZE];
static _Alignas(CCDMA_BUS_RANGE_ALIGN) uint8_t range_mem[2 * 16 * CCDMA_BUS_RANGE_SIZE];

static const char *dir_name(int dir) {
    return dir == CCDMA_TO_DEVICE ? "to-device" : dir == CCDMA_FROM_DEVICE ? "from-device" : "bidirectional";
}

int main(void) {
    struct ccdma_platform platform = {
        .ctx = NULL,
        .confidential = 1,
        .share = p_share,
        .unshare = p_unshare,
        .cpu_ptr = p_cpu_ptr,
        .virt_to_phys = p_virt_to_phys,
        .ram_end = p_ram_end,
    };
    printf("ccdma C demo: layer %zu bytes (header allows %d), device %d, sg entry %d\n", ccdma_layer_size(),
           CCDMA_LAYER_SIZE, CCDMA_DEVICE_SIZE, CCDMA_SG_ENTRY_SIZE);

    /* Argument checks answer with codes. */
    if (ccdma_layer_init(NULL, sizeof layer_mem, &platform) != CCDMA_ERR_NULL) FAIL("null layer memory accepted");
    if (ccdma_layer_init(layer_mem, 16, &platform) != CCDMA_ERR_MEMORY) FAIL("short layer memory accepted");
    REQUIRE(ccdma_layer_init(layer_mem, sizeof layer_mem, &platform));
    struct ccdma_layer *layer = (struct ccdma_layer *)layer_mem;

    int hi = ccdma_add_pool(layer, HIGH_PHYS, POOL_LEN, meta_high, sizeof meta_high);
    int lo = ccdma_add_pool(layer, LOW_PHYS, POOL_LEN, meta_low, sizeof meta_low);
    if (hi < 0 || lo < 0) STOP("add_pool: %s / %s", ccdma_strerror(hi), ccdma_strerror(lo));
    printf("pools: #%d at %#llx, #%d at %#llx, %u KiB each; shared now: %d %d\n", hi, HIGH_PHYS, lo, LOW_PHYS,
           POOL_LEN / 1024, page_state(HIGH_PHYS), page_state(LOW_PHYS + POOL_LEN - PAGE));
    static _Alignas(CCDMA_SLOT_META_ALIGN) uint8_t meta_x[4 * PAGE / CCDMA_SLOT_SIZE * CCDMA_SLOT_META_SIZE];
    if (ccdma_add_pool(layer, LOW_PHYS + PAGE, PAGE * 4, meta_x, sizeof meta_x) != CCDMA_ERR_POOL)
        FAIL("overlapping pool accepted");

    unsigned masks[3] = {24, 32, 64};
    struct ccdma_device *devs[3];
    for (int d = 0; d < 3; d++) {
        REQUIRE(ccdma_attach(layer, dev_mem[d], sizeof dev_mem[d], 10 + d, masks[d]));
        devs[d] = (struct ccdma_device *)dev_mem[d];
    }
    static _Alignas(CCDMA_DEVICE_ALIGN) uint8_t tiny[CCDMA_DEVICE_SIZE];
    int rc = ccdma_attach(layer, tiny, sizeof tiny, 99, 20);
    printf("attach: 24, 32, 64-bit devices ok; 20-bit device: %d (%s)\n", rc, ccdma_strerror(rc));
    if (rc != CCDMA_ERR_NO_PATH) FAIL("20-bit device attached");

    /* Streaming: every device, every direction, bytes checked on both sides. */
    int dirs[3] = {CCDMA_TO_DEVICE, CCDMA_FROM_DEVICE, CCDMA_BIDIRECTIONAL};
    size_t len = 3000;
    uint8_t *buf = alloc_private(len, NULL);
    uint8_t *want = malloc(len), *got = malloc(len);
    for (int d = 0; d < 3; d++) {
        for (int k = 0; k < 3; k++) {
            unsigned seed = (unsigned)(d * 3 + k);
            fill(buf, len, seed);
            memcpy(want, buf, len);
            uint64_t bus = 0;
            CHECK(ccdma_map(layer, devs[d], buf, len, dirs[k], &bus));
            if (dirs[k] != CCDMA_FROM_DEVICE) {
                if (dev_access(masks[d], bus, got, len, 0) || memcmp(got, want, len) != 0)
                    FAIL("device %u read wrong bytes", masks[d]);
            } else {
                memset(got, 1, len);
                if (dev_access(masks[d], bus, got, len, 0) || got[0] != 0 || got[len - 1] != 0)
                    FAIL("from-device slot not zero-filled");
            }
            if (dirs[k] != CCDMA_TO_DEVICE) {
                fill(want, len, seed + 100);
                if (dev_access(masks[d], bus, want, len, 1)) FAIL("device write refused");
            }
            if (d == 0 && k == 0) {
                int busy = ccdma_detach(layer, devs[0]);
                int wrong = ccdma_unmap(layer, devs[d], bus, len + 1, dirs[k]);
                printf("  misuse: detach with a live mapping: %d (%s); unmap with a wrong length: %d (%s)\n", busy,
                       ccdma_strerror(busy), wrong, ccdma_strerror(wrong));
                if (busy != CCDMA_ERR_BUSY || wrong != CCDMA_ERR_MISUSE) FAIL("misuse not refused");
            }
            CHECK(ccdma_unmap(layer, devs[d], bus, len, dirs[k]));
            if (memcmp(buf, want, len) != 0) FAIL("buffer after unmap differs");
            printf("  %2u-bit device, %-13s: bus %#llx, %zu bytes exact\n", masks[d], dir_name(dirs[k]),
                   (unsigned long long)bus, len);
        }
    }

    /* Scatter-gather: three buffers from the device, one stream of bytes across the segments. */
    size_t lens[3] = {100, 5000, 700}, total = 5800;
    struct ccdma_sg_in in[3];
    for (int i = 0; i < 3; i++) {
        in[i].ptr = alloc_private(lens[i], NULL);
        in[i].len = lens[i];
        memset(in[i].ptr, 0xEE, lens[i]);
    }
    struct ccdma_segment segs[3];
    size_t nsegs = 0;
    uint8_t *stream = malloc(total);
    fill(stream, total, 77);
    CHECK(ccdma_map_sg(layer, devs[1], in, 3, CCDMA_FROM_DEVICE, sg_mem, sizeof sg_mem, segs, &nsegs));
    size_t off = 0;
    for (size_t i = 0; i < nsegs; i++) {
        if (dev_access(32, segs[i].bus, stream + off, segs[i].len, 1)) FAIL("sg segment write refused");
        printf("  sg segment %zu: bus %#llx, %zu bytes\n", i, (unsigned long long)segs[i].bus, segs[i].len);
        off += segs[i].len;
    }
    if (off != total) FAIL("segments cover %zu of %zu bytes", off, total);
    CHECK(ccdma_unmap_sg(layer, devs[1], sg_mem, 3, CCDMA_FROM_DEVICE));
    off = 0;
    for (int i = 0; i < 3; i++) {
        if (memcmp(in[i].ptr, stream + off, lens[i]) != 0) FAIL("sg buffer %d differs", i);
        off += lens[i];
    }
    printf("sg: 3 buffers (%zu bytes) in %zu segments for the 32-bit device, bytes exact\n", total, nsegs);

    /* Coherent: two pages for the 24-bit device, shared while allocated, private after. */
    uint64_t cphys;
    alloc_private(2 * PAGE, &cphys);
    void *cpu = NULL;
    uint64_t cbus = 0;
    CHECK(ccdma_alloc_coherent(layer, devs[0], cphys, 2, coh_mem, sizeof coh_mem, &cpu, &cbus));
    int shared_now = page_state(cphys) == 1 && page_state(cphys + PAGE) == 1;
    uint8_t msg[64];
    fill(msg, sizeof msg, 5);
    if (dev_access(24, cbus + PAGE, msg, sizeof msg, 1)) FAIL("coherent write refused");
    if (memcmp((uint8_t *)cpu + PAGE, msg, sizeof msg) != 0) FAIL("coherent bytes differ");
    CHECK(ccdma_free_coherent(layer, devs[0], (struct ccdma_coherent *)coh_mem));
    int private_after = page_state(cphys) == 0 && page_state(cphys + PAGE) == 0;
    printf("coherent: 2 pages at %#llx, bus %#llx, shared while allocated: %s, private after free: %s\n",
           (unsigned long long)cphys, (unsigned long long)cbus, shared_now ? "yes" : "NO",
           private_after ? "yes" : "NO");
    if (!shared_now || !private_after) FAIL("coherent page states");

    /* Attributes and syncs (the 32-bit device). */
    uint8_t *ab = alloc_private(len, NULL);
    uint8_t first[64], second[64];
    fill(first, sizeof first, 1);
    fill(second, sizeof second, 2);
    memset(ab, 0x33, len);
    uint64_t abus = 0;
    CHECK(ccdma_map_attrs(layer, devs[1], ab, len, CCDMA_FROM_DEVICE, CCDMA_ATTR_SKIP_CPU_SYNC, &abus));
    if (dev_access(32, abus, first, sizeof first, 1)) FAIL("device write refused");
    int untouched = ab[0] == 0x33;
    CHECK(ccdma_sync_for_cpu(layer, devs[1], abus, 0, sizeof first, CCDMA_FROM_DEVICE));
    int synced = memcmp(ab, first, sizeof first) == 0;
    if (dev_access(32, abus, second, sizeof second, 1)) FAIL("device write refused");
    CHECK(ccdma_unmap_attrs(layer, devs[1], abus, len, CCDMA_FROM_DEVICE, CCDMA_ATTR_SKIP_CPU_SYNC));
    int skipped = memcmp(ab, first, sizeof first) == 0 && ab[len - 1] == 0x33;
    printf("attrs: SKIP_CPU_SYNC from-device: buffer untouched until sync: %s, after sync_for_cpu: %s, "
           "unmap copied nothing: %s\n",
           untouched ? "yes" : "NO", synced ? "yes" : "NO", skipped ? "yes" : "NO");
    if (!untouched || !synced || !skipped) FAIL("SKIP_CPU_SYNC");

    CHECK(ccdma_map_attrs(layer, devs[1], ab, len, CCDMA_FROM_DEVICE, CCDMA_ATTR_PRESERVE_UNWRITTEN, &abus));
    memset(got, 0, len);
    int preserved = dev_access(32, abus, got, len, 0) == 0 && memcmp(got, ab, len) == 0;
    if (dev_access(32, abus, second, sizeof second, 1)) FAIL("device write refused");
    CHECK(ccdma_unmap(layer, devs[1], abus, len, CCDMA_FROM_DEVICE));
    preserved = preserved && memcmp(ab, second, sizeof second) == 0 && ab[len - 1] == 0x33;

    fill(ab, len, 9);
    CHECK(ccdma_map(layer, devs[1], ab, len, CCDMA_BIDIRECTIONAL, &abus));
    ab[0] ^= 0xFF; /* the CPU changes the buffer after the map ... */
    CHECK(ccdma_sync_for_device(layer, devs[1], abus, 0, 1, CCDMA_BIDIRECTIONAL));
    int pushed = dev_access(32, abus, got, 1, 0) == 0 && got[0] == ab[0]; /* ... the device sees it */
    CHECK(ccdma_unmap(layer, devs[1], abus, len, CCDMA_BIDIRECTIONAL));
    int bad_attr = ccdma_map_attrs(layer, devs[1], ab, len, CCDMA_TO_DEVICE, 64, &abus);
    printf("attrs: PRESERVE_UNWRITTEN keeps unwritten bytes: %s; sync_for_device pushes a CPU change: %s; "
           "unknown attribute: %d (%s)\n",
           preserved ? "yes" : "NO", pushed ? "yes" : "NO", bad_attr, ccdma_strerror(bad_attr));
    if (!preserved || !pushed || bad_attr != CCDMA_ERR_INVALID) FAIL("attributes");

    CHECK(ccdma_map_sg(layer, devs[1], in, 3, CCDMA_FROM_DEVICE, sg_mem, sizeof sg_mem, segs, &nsegs));
    fill(stream, total, 78);
    off = 0;
    for (size_t i = 0; i < nsegs; i++) {
        if (dev_access(32, segs[i].bus, stream + off, segs[i].len, 1)) FAIL("sg segment write refused");
        off += segs[i].len;
    }
    CHECK(ccdma_sync_sg_for_cpu(layer, devs[1], sg_mem, 3, CCDMA_FROM_DEVICE));
    int sg_synced = memcmp(in[0].ptr, stream, lens[0]) == 0;
    CHECK(ccdma_unmap_sg_attrs(layer, devs[1], sg_mem, 3, CCDMA_FROM_DEVICE, CCDMA_ATTR_SKIP_CPU_SYNC));
    printf("sync: sg list visible to the CPU while mapped: %s\n", sg_synced ? "yes" : "NO");
    if (!sg_synced) FAIL("sync_sg_for_cpu");

    /* Teardown: refused while anything is live, then pools private again and the memory ours. */
    uint64_t live_bus = 0;
    CHECK(ccdma_map(layer, devs[2], buf, 64, CCDMA_TO_DEVICE, &live_bus));
    int busy_fini = ccdma_layer_fini(layer);
    CHECK(ccdma_unmap(layer, devs[2], live_bus, 64, CCDMA_TO_DEVICE));
    for (int d = 0; d < 3; d++) CHECK(ccdma_detach(layer, devs[d]));
    CHECK(ccdma_layer_fini(layer));
    int pools_private = page_state(HIGH_PHYS) == 0 && page_state(LOW_PHYS + POOL_LEN - PAGE) == 0;
    printf("teardown: fini with a live mapping: %d (%s); after detach: pools private again: %s\n", busy_fini,
           ccdma_strerror(busy_fini), pools_private ? "yes" : "NO");
    if (busy_fini != CCDMA_ERR_BUSY || !pools_private) FAIL("teardown");

    /* The same guest behind an IOMMU written in C, strict: entries per mapping, by direction. */
    struct ccdma_iommu iommu = {.ctx = NULL, .window = io_window, .map = io_map, .unmap = io_unmap};
    platform.iommu = &iommu;
    REQUIRE(ccdma_layer_init(layer_mem, sizeof layer_mem, &platform));
    if (ccdma_add_pool(layer, LOW_PHYS, POOL_LEN, meta_low, sizeof meta_low) < 0) STOP("add_pool");
    if (ccdma_add_pool(layer, HIGH_PHYS, POOL_LEN, meta_high, sizeof meta_high) < 0) STOP("add_pool");
    REQUIRE(ccdma_enable_iommu(layer, CCDMA_IOMMU_STRICT, 2, range_mem, sizeof range_mem));
    uint32_t io_ids[2] = {20, 21};
    unsigned io_masks[2] = {32, 64};
    for (int d = 0; d < 2; d++) REQUIRE(ccdma_attach(layer, dev_mem[d], sizeof dev_mem[d], io_ids[d], io_masks[d]));
    for (int d = 0; d < 2; d++) {
        for (int k = 0; k < 2; k++) {
            int dir = dirs[k];
            uint64_t bus = 0;
            fill(buf, len, (unsigned)(40 + d * 2 + k));
            memcpy(want, buf, len);
            CHECK(ccdma_map(layer, devs[d], buf, len, dir, &bus));
            if (bus < windows[d].start || bus >= windows[d].start + (uint64_t)WIN_PAGES * PAGE)
                FAIL("bus %#llx outside the window", (unsigned long long)bus);
            unsigned blocked_before = iommu_blocked;
            if (dir == CCDMA_TO_DEVICE) {
                if (dev_access_iommu(io_ids[d], bus, got, len, 0) || memcmp(got, want, len) != 0)
                    FAIL("device read through the IOMMU differs");
                if (dev_access_iommu(io_ids[d], bus, got, 1, 1) == 0) FAIL("write through a read-only entry");
            } else {
                fill(want, len, (unsigned)(50 + d));
                if (dev_access_iommu(io_ids[d], bus, want, len, 1)) FAIL("device write blocked");
                if (dev_access_iommu(io_ids[d], bus, got, 1, 0) == 0) FAIL("read through a write-only entry");
            }
            unsigned entries_live = live_entries();
            CHECK(ccdma_unmap(layer, devs[d], bus, len, dir));
            if (memcmp(buf, want, len) != 0) FAIL("buffer after unmap differs");
            int gone = dev_access_iommu(io_ids[d], bus, got, 1, 0) != 0;
            printf("  iommu, %2u-bit device, %-11s: bus %#llx, %u entries while mapped, wrong-way access "
                   "blocked: %s, blocked after unmap: %s\n",
                   io_masks[d], dir_name(dir), (unsigned long long)bus, entries_live,
                   iommu_blocked == blocked_before + 2 ? "yes" : "NO", gone ? "yes" : "NO");
            if (iommu_blocked != blocked_before + 2 || !gone) FAIL("IOMMU permissions");
        }
    }
    int busy_disable = ccdma_disable_iommu(layer);
    for (int d = 0; d < 2; d++) CHECK(ccdma_detach(layer, devs[d]));
    CHECK(ccdma_layer_fini(layer));
    printf("iommu: %u map and %u unmap calls, %u entries live at the end; disable with devices attached: %d (%s)\n",
           iommu_maps, iommu_unmaps, live_entries(), busy_disable, ccdma_strerror(busy_disable));
    if (live_entries() != 0 || busy_disable != CCDMA_ERR_BUSY) FAIL("IOMMU teardown");

    /* A trusted platform: device 30 is accepted, device 31 is not. No IOMMU, identity private bus
     * addresses (private_bus_addr NULL). */
    platform.iommu = NULL;
    platform.accept = t_accept;
    if (ccdma_layer_init(layer_mem, sizeof layer_mem, &platform) != CCDMA_ERR_NULL)
        FAIL("accept without revoke accepted");
    platform.revoke = t_revoke;
    REQUIRE(ccdma_layer_init(layer_mem, sizeof layer_mem, &platform));
    if (ccdma_add_pool(layer, LOW_PHYS, POOL_LEN, meta_low, sizeof meta_low) < 0) STOP("add_pool");
    REQUIRE(ccdma_attach(layer, dev_mem[0], sizeof dev_mem[0], TRUSTED_ID, 64));
    REQUIRE(ccdma_attach(layer, dev_mem[1], sizeof dev_mem[1], TRUSTED_ID + 1, 64));
    const char *path_before = path_of(layer, devs[0]);
    uint64_t tphys = 0, tbus = 0;
    uint8_t *tb = alloc_private(len, &tphys);
    fill(tb, len, 60);
    CHECK(ccdma_map(layer, devs[0], tb, len, CCDMA_TO_DEVICE, &tbus));
    int busy_accept = ccdma_accept(layer, devs[0]);
    CHECK(ccdma_unmap(layer, devs[0], tbus, len, CCDMA_TO_DEVICE));
    int refused = ccdma_accept(layer, devs[1]);
    CHECK(ccdma_accept(layer, devs[0]));
    const char *path_after = path_of(layer, devs[0]);
    printf("trusted: path %s; accept with a live mapping: %d (%s); device %u refused by the platform: %d (%s); "
           "accepted: %s\n",
           path_before, busy_accept, ccdma_strerror(busy_accept), TRUSTED_ID + 1, refused, ccdma_strerror(refused),
           path_after);
    if (busy_accept != CCDMA_ERR_BUSY || refused != CCDMA_ERR_TRUST || strcmp(path_after, "trusted-direct") != 0 ||
        strcmp(path_of(layer, devs[1]), "bounce-always") != 0 ||
        ccdma_device_path(layer, devs[0]) != CCDMA_PATH_TRUSTED_DIRECT)
        FAIL("accept");

    /* The accepted device: the private buffer itself, no share call, in both directions. */
    unsigned shares_before = shares, unshares_before = unshares;
    fill(tb, len, 61);
    memcpy(want, tb, len);
    CHECK(ccdma_map(layer, devs[0], tb, len, CCDMA_BIDIRECTIONAL, &tbus));
    int own = tbus == tphys && page_state(tphys) == 0;
    if (trusted_access(TRUSTED_ID, tbus, got, len, 0) || memcmp(got, want, len) != 0) FAIL("trusted read differs");
    fill(want, len, 62);
    if (trusted_access(TRUSTED_ID, tbus, want, len, 1)) FAIL("trusted write refused");
    CHECK(ccdma_unmap(layer, devs[0], tbus, len, CCDMA_BIDIRECTIONAL));
    int exact = memcmp(tb, want, len) == 0;
    unsigned share_calls = shares - shares_before + unshares - unshares_before;
    printf("trusted: private map at bus %#llx, the buffer's own address: %s, share calls: %u, bytes both ways: %s\n",
           (unsigned long long)tbus, own ? "yes" : "NO", share_calls, exact ? "yes" : "NO");
    if (!own || share_calls != 0 || !exact) FAIL("trusted private map");

    /* CC_SHARED: a shared bounce for the accepted device; the other device bounces as ever. */
    fill(tb, len, 63);
    uint64_t sbus = 0, ubus = 0;
    CHECK(ccdma_map_attrs(layer, devs[0], tb, len, CCDMA_TO_DEVICE, CCDMA_ATTR_CC_SHARED, &sbus));
    int shared_bounce = sbus != tphys && in_pool(sbus, len) && dev_access(64, sbus, got, len, 0) == 0 &&
                        memcmp(got, tb, len) == 0;
    CHECK(ccdma_unmap_attrs(layer, devs[0], sbus, len, CCDMA_TO_DEVICE, CCDMA_ATTR_CC_SHARED));
    CHECK(ccdma_map(layer, devs[1], tb, len, CCDMA_TO_DEVICE, &ubus));
    int untrusted_bounce = ubus != tphys && in_pool(ubus, len) &&
                           trusted_access(TRUSTED_ID + 1, ubus, got, len, 0) == 0 && memcmp(got, tb, len) == 0;
    CHECK(ccdma_unmap(layer, devs[1], ubus, len, CCDMA_TO_DEVICE));
    printf("trusted: CC_SHARED bounced through shared bus %#llx: %s; untrusted device bounced through %#llx: %s\n",
           (unsigned long long)sbus, shared_bounce ? "yes" : "NO", (unsigned long long)ubus,
           untrusted_bounce ? "yes" : "NO");
    if (!shared_bounce || !untrusted_bounce) FAIL("bounces beside an accepted device");

    /* Coherent buffers of the accepted device: private in place, or shared with CC_SHARED. */
    uint64_t pc_phys = 0, sc_phys = 0, pc_bus = 0, sc_bus = 0;
    alloc_private(PAGE, &pc_phys);
    alloc_private(PAGE, &sc_phys);
    void *pc_cpu = NULL, *sc_cpu = NULL;
    static _Alignas(CCDMA_COHERENT_ALIGN) uint8_t coh2_mem[CCDMA_COHERENT_SIZE];
    shares_before = shares;
    CHECK(ccdma_alloc_coherent(layer, devs[0], pc_phys, 1, coh_mem, sizeof coh_mem, &pc_cpu, &pc_bus));
    int coh_private = pc_bus == pc_phys && page_state(pc_phys) == 0 && shares == shares_before;
    fill(msg, sizeof msg, 64);
    if (trusted_access(TRUSTED_ID, pc_bus, msg, sizeof msg, 1) || memcmp(pc_cpu, msg, sizeof msg) != 0)
        FAIL("private coherent bytes differ");
    CHECK(ccdma_alloc_coherent_attrs(layer, devs[0], sc_phys, 1, CCDMA_ATTR_CC_SHARED, coh2_mem, sizeof coh2_mem,
                                     &sc_cpu, &sc_bus));
    int coh_shared = page_state(sc_phys) == 1 && dev_access(64, sc_bus, msg, sizeof msg, 1) == 0 &&
                     memcmp(sc_cpu, msg, sizeof msg) == 0;
    CHECK(ccdma_free_coherent(layer, devs[0], (struct ccdma_coherent *)coh_mem));
    CHECK(ccdma_free_coherent(layer, devs[0], (struct ccdma_coherent *)coh2_mem));
    coh_shared = coh_shared && page_state(sc_phys) == 0;
    printf("trusted: coherent private in place, no share call: %s; coherent CC_SHARED shared while allocated: %s\n",
           coh_private ? "yes" : "NO", coh_shared ? "yes" : "NO");
    if (!coh_private || !coh_shared) FAIL("trusted coherent");

    /* Revoke: refused while busy, then untrusted again (platform told) and bouncing. */
    CHECK(ccdma_map(layer, devs[0], tb, len, CCDMA_TO_DEVICE, &tbus));
    int busy_revoke = ccdma_revoke(layer, devs[0]);
    CHECK(ccdma_unmap(layer, devs[0], tbus, len, CCDMA_TO_DEVICE));
    int revoked = ccdma_revoke(layer, devs[0]);
    CHECK(ccdma_map(layer, devs[0], tb, len, CCDMA_TO_DEVICE, &tbus));
    int bounced_again = tbus != tphys && in_pool(tbus, len);
    CHECK(ccdma_unmap(layer, devs[0], tbus, len, CCDMA_TO_DEVICE));
    printf("trusted: revoke with a live mapping: %d (%s); revoke: %d, platform told: %s, path %s, bounced again: %s\n",
           busy_revoke, ccdma_strerror(busy_revoke), revoked, !trusted_accepted ? "yes" : "NO",
           path_of(layer, devs[0]), bounced_again ? "yes" : "NO");
    if (busy_revoke != CCDMA_ERR_BUSY || revoked != CCDMA_OK || trusted_accepted || !bounced_again ||
        strcmp(path_of(layer, devs[0]), "bounce-always") != 0)
        FAIL("revoke");
    for (int d = 0; d < 2; d++) CHECK(ccdma_detach(layer, devs[d]));
    CHECK(ccdma_layer_fini(layer));
    printf("trusted: %u accept and %u revoke calls\n", accept_calls, revoke_calls);

    printf("platform saw %u share and %u unshare calls, %u violations\n", shares, unshares, violations);
    free(want);
    free(got);
    free(stream);
    if (violations || failures) {
        printf("FAILED: %u violations, %u failures\n", violations, failures);
        return 1;
    }
    printf("OK\n");
    return 0;
}
