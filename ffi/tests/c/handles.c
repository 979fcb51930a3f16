/* ccdma from C: handle rules and the shared-bus hook (ffi/tests/c_programs.rs builds and runs this).
 *
 * A confidential guest of 1 MiB at 1 MiB whose platform is written here, run three times: as an Arm
 * CCA realm (devices reach shared memory only through the unprotected alias, bit 47:
 * CCDMA_BUS_ENCODING_CCA(48)), as an AMD SEV guest (C-bit 51 cleared: CCDMA_BUS_ENCODING_SEV(51)) and
 * with the identity encoding (TDX, pseries). The device refuses (and counts) any access that is not
 * shared RAM reached through the platform's encoding. Then every misuse of a handle the header names
 * must answer CCDMA_ERR_MISUSE and change nothing (no share or unshare call, nothing leaked).
 * Exits non-zero on any failure. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ccdma.h"

#define PAGE 4096u
#define RAM_PHYS 0x100000ull
#define RAM_SIZE (1024u * 1024u)
#define POOL_LEN (128u * 1024u)

CCDMA_ALIGNED(PAGE) static uint8_t ram[RAM_SIZE];
static uint8_t shared[RAM_SIZE / PAGE];
static unsigned violations, failures, sharing_calls;
static struct ccdma_bus_encoding enc; /* the platform's encoding, as the device sees it */

#define FAIL(...)                                                                                      \
    do {                                                                                               \
        printf("FAIL line %d: ", __LINE__);                                                            \
        printf(__VA_ARGS__);                                                                           \
        printf("\n");                                                                                  \
        failures++;                                                                                    \
    } while (0)
#define EXPECT(call, want)                                                                             \
    do {                                                                                               \
        int rc_ = (call);                                                                              \
        if (rc_ != (want)) FAIL("%s = %d (%s), expected %d", #call, rc_, ccdma_strerror(rc_), (want)); \
    } while (0)

static int in_ram(uint64_t phys, uint64_t len) {
    return phys >= RAM_PHYS && len <= RAM_SIZE && phys - RAM_PHYS <= RAM_SIZE - len;
}
static int flip(uint64_t phys, uint64_t pages, uint64_t *done, uint8_t to) {
    sharing_calls++;
    *done = 0;
    if (phys % PAGE || !in_ram(phys, pages * PAGE)) {
        violations++;
        return -1;
    }
    for (uint64_t i = 0; i < pages; i++, (*done)++) {
        uint8_t *st = &shared[(phys - RAM_PHYS) / PAGE + i];
        if (*st == to) {
            printf("  platform: page %#llx already in that state\n", (unsigned long long)(phys + i * PAGE));
            violations++;
            return -2;
        }
        *st = to;
    }
    return 0;
}
static int p_share(void *ctx, uint64_t phys, uint64_t pages, uint64_t *done) {
    (void)ctx;
    return flip(phys, pages, done, 1);
}
static int p_unshare(void *ctx, uint64_t phys, uint64_t pages, uint64_t *done) {
    (void)ctx;
    return flip(phys, pages, done, 0);
}
static void *p_cpu_ptr(void *ctx, uint64_t phys, size_t len) {
    (void)ctx;
    return in_ram(phys, len) ? ram + (phys - RAM_PHYS) : NULL;
}
static int p_virt_to_phys(void *ctx, const void *ptr, size_t len, uint64_t *phys) {
    (void)ctx;
    uintptr_t p = (uintptr_t)ptr, b = (uintptr_t)ram;
    if (p < b || len > RAM_SIZE || p - b > RAM_SIZE - len) return -1;
    *phys = RAM_PHYS + (p - b);
    return 0;
}
static uint64_t p_ram_end(void *ctx) {
    (void)ctx;
    return RAM_PHYS + RAM_SIZE;
}

/* The device: DMA of len bytes at bus, which must carry the encoding's set bits and none of its cleared
 * bits, and decode to shared RAM. */
static int dev_access(uint64_t bus, void *data, size_t len, int write) {
    if ((bus & enc.set) != enc.set || (bus & enc.clear) != 0) {
        printf("  device: bus %#llx not in the platform's encoding\n", (unsigned long long)bus);
        violations++;
        return -1;
    }
    uint64_t phys = bus & ~enc.set & ~enc.clear;
    if (!in_ram(phys, len)) {
        violations++;
        return -1;
    }
    for (uint64_t p = phys / PAGE; p <= (phys + len - 1) / PAGE; p++)
        if (!shared[p - RAM_PHYS / PAGE]) {
            printf("  device: private page %#llx refused\n", (unsigned long long)(p * PAGE));
            violations++;
            return -1;
        }
    if (write)
        memcpy(ram + (phys - RAM_PHYS), data, len);
    else
        memcpy(data, ram + (phys - RAM_PHYS), len);
    return 0;
}

static unsigned shared_pages(void) {
    unsigned n = 0;
    for (unsigned i = 0; i < RAM_SIZE / PAGE; i++) n += shared[i];
    return n;
}

CCDMA_ALIGNED(CCDMA_LAYER_ALIGN) static uint8_t layer_mem[CCDMA_LAYER_SIZE];
CCDMA_ALIGNED(CCDMA_SLOT_META_ALIGN) static uint8_t meta[CCDMA_POOL_META_SIZE(POOL_LEN)];
CCDMA_ALIGNED(CCDMA_DEVICE_ALIGN) static uint8_t dev_mem[CCDMA_DEVICE_SIZE];
CCDMA_ALIGNED(CCDMA_SG_ENTRY_ALIGN) static uint8_t sg_mem[CCDMA_SG_LIST_SIZE(2)];
CCDMA_ALIGNED(CCDMA_COHERENT_ALIGN) static uint8_t coh_old[CCDMA_COHERENT_SIZE], coh_ring[CCDMA_COHERENT_SIZE];

#define BUF_PHYS (RAM_PHYS + 512u * 1024u) /* private driver memory above the pool */
#define COH_PHYS (RAM_PHYS + 768u * 1024u) /* a page for coherent buffers */

static struct ccdma_layer *up(const struct ccdma_platform *platform) {
    EXPECT(ccdma_layer_init(layer_mem, sizeof layer_mem, platform), CCDMA_OK);
    struct ccdma_layer *layer = (struct ccdma_layer *)layer_mem;
    EXPECT(ccdma_add_pool(layer, RAM_PHYS, POOL_LEN, meta, sizeof meta), 0);
    return layer;
}

/* Streaming both ways, a list and a coherent buffer through the encoding `e`. */
static void io(const char *name, struct ccdma_bus_encoding e) {
    struct ccdma_platform platform = {
        .share = p_share, .unshare = p_unshare, .cpu_ptr = p_cpu_ptr, .virt_to_phys = p_virt_to_phys,
        .ram_end = p_ram_end, .confidential = 1, .shared_bus = e,
    };
    enc = e;
    unsigned before = violations;
    struct ccdma_layer *layer = up(&platform);
    struct ccdma_device *dev = (struct ccdma_device *)dev_mem;
    EXPECT(ccdma_attach(layer, dev_mem, sizeof dev_mem, 1, 64), CCDMA_OK);
    uint8_t *buf = ram + (BUF_PHYS - RAM_PHYS), got[3000], want[3000];
    for (size_t i = 0; i < sizeof want; i++) want[i] = buf[i] = (uint8_t)(i * 7);
    uint64_t bus = 0, first = 0;
    EXPECT(ccdma_map(layer, dev, buf, 3000, CCDMA_TO_DEVICE, &bus), CCDMA_OK);
    first = bus;
    if (dev_access(bus, got, 3000, 0) || memcmp(got, want, 3000) != 0) FAIL("%s: device read", name);
    EXPECT(ccdma_unmap(layer, dev, bus, 3000, CCDMA_TO_DEVICE), CCDMA_OK);
    EXPECT(ccdma_map(layer, dev, buf, 3000, CCDMA_FROM_DEVICE, &bus), CCDMA_OK);
    memset(want, 0xC5, sizeof want);
    if (dev_access(bus, want, 3000, 1)) FAIL("%s: device write", name);
    EXPECT(ccdma_unmap(layer, dev, bus, 3000, CCDMA_FROM_DEVICE), CCDMA_OK);
    if (memcmp(buf, want, 3000) != 0) FAIL("%s: from-device bytes", name);
    struct ccdma_sg_in in[2] = {{buf, 700}, {buf + PAGE, 900}};
    struct ccdma_segment segs[2];
    size_t nsegs = 0;
    EXPECT(ccdma_map_sg(layer, dev, in, 2, CCDMA_FROM_DEVICE, sg_mem, sizeof sg_mem, segs, &nsegs), CCDMA_OK);
    for (size_t i = 0; i < nsegs; i++)
        if (dev_access(segs[i].bus, want, segs[i].len, 1)) FAIL("%s: segment write", name);
    EXPECT(ccdma_unmap_sg(layer, dev, sg_mem, 2, CCDMA_FROM_DEVICE), CCDMA_OK);
    void *cpu = NULL;
    uint64_t cbus = 0;
    EXPECT(ccdma_alloc_coherent(layer, dev, COH_PHYS, 1, coh_old, sizeof coh_old, &cpu, &cbus), CCDMA_OK);
    if (dev_access(cbus + 16, "ring", 4, 1) || memcmp((uint8_t *)cpu + 16, "ring", 4) != 0)
        FAIL("%s: coherent bytes", name);
    EXPECT(ccdma_free_coherent(layer, dev, (struct ccdma_coherent *)coh_old), CCDMA_OK);
    EXPECT(ccdma_detach(layer, dev), CCDMA_OK);
    EXPECT(ccdma_layer_fini(layer), CCDMA_OK);
    printf("%s: first bus %#llx, coherent bus %#llx, bytes exact, %u device refusals, %u pages shared after\n",
           name, (unsigned long long)first, (unsigned long long)cbus, violations - before, shared_pages());
    if (violations != before || shared_pages() != 0) FAIL("%s", name);
}

/* Every misuse of a handle: CCDMA_ERR_MISUSE, no platform call, nothing leaked. */
static void misuse(void) {
    struct ccdma_platform platform = {
        .share = p_share, .unshare = p_unshare, .cpu_ptr = p_cpu_ptr, .virt_to_phys = p_virt_to_phys,
        .ram_end = p_ram_end, .confidential = 1, .shared_bus = CCDMA_BUS_ENCODING_IDENTITY,
    };
    enc = platform.shared_bus;
    struct ccdma_layer *layer = up(&platform);
    struct ccdma_device *dev = (struct ccdma_device *)dev_mem;
    struct ccdma_coherent *old = (struct ccdma_coherent *)coh_old, *ring = (struct ccdma_coherent *)coh_ring;
    uint8_t *buf = ram + (BUF_PHYS - RAM_PHYS);
    void *cpu = NULL;
    uint64_t bus = 0, rbus = 0;
    size_t nsegs = 0;
    struct ccdma_segment segs[2];
    struct ccdma_sg_in in[2] = {{buf, 300}, {buf + PAGE, 300}};

    EXPECT(ccdma_layer_init(layer_mem, sizeof layer_mem, &platform), CCDMA_ERR_MISUSE); /* over a live layer */
    EXPECT(ccdma_attach(layer, dev_mem, sizeof dev_mem, 2, 64), CCDMA_OK);
    EXPECT(ccdma_attach(layer, dev_mem, sizeof dev_mem, 3, 64), CCDMA_ERR_MISUSE); /* over a live device */

    /* Free twice; a stale free after the page became a live ring. */
    EXPECT(ccdma_alloc_coherent(layer, dev, COH_PHYS, 1, coh_old, sizeof coh_old, &cpu, &bus), CCDMA_OK);
    EXPECT(ccdma_free_coherent(layer, dev, old), CCDMA_OK);
    unsigned calls = sharing_calls;
    EXPECT(ccdma_free_coherent(layer, dev, old), CCDMA_ERR_MISUSE);
    EXPECT(ccdma_alloc_coherent(layer, dev, COH_PHYS, 1, coh_ring, sizeof coh_ring, &cpu, &rbus), CCDMA_OK);
    calls = sharing_calls;
    EXPECT(ccdma_free_coherent(layer, dev, old), CCDMA_ERR_MISUSE);
    uint8_t word[4];
    int ring_ok = dev_access(rbus, word, 4, 0) == 0 && sharing_calls == calls;
    EXPECT(ccdma_alloc_coherent(layer, dev, COH_PHYS, 1, coh_ring, sizeof coh_ring, &cpu, &rbus), CCDMA_ERR_MISUSE);
    EXPECT(ccdma_free_coherent(layer, dev, ring), CCDMA_OK);

    /* A list over a live list. */
    EXPECT(ccdma_map_sg(layer, dev, in, 2, CCDMA_TO_DEVICE, sg_mem, sizeof sg_mem, segs, &nsegs), CCDMA_OK);
    unsigned pages = shared_pages();
    EXPECT(ccdma_map_sg(layer, dev, in, 1, CCDMA_TO_DEVICE, sg_mem, sizeof sg_mem, segs, &nsegs), CCDMA_ERR_MISUSE);
    EXPECT(ccdma_detach(layer, dev), CCDMA_ERR_BUSY);
    EXPECT(ccdma_unmap_sg(layer, dev, sg_mem, 2, CCDMA_TO_DEVICE), CCDMA_OK);
    EXPECT(ccdma_unmap_sg(layer, dev, sg_mem, 2, CCDMA_TO_DEVICE), CCDMA_ERR_MISUSE);
    int list_ok = shared_pages() == pages;

    /* Detach twice; a detached device maps nothing. */
    EXPECT(ccdma_detach(layer, dev), CCDMA_OK);
    calls = sharing_calls;
    EXPECT(ccdma_detach(layer, dev), CCDMA_ERR_MISUSE);
    EXPECT(ccdma_map(layer, dev, buf, 64, CCDMA_TO_DEVICE, &bus), CCDMA_ERR_MISUSE);
    EXPECT(ccdma_device_path(layer, dev), CCDMA_ERR_MISUSE);
    int quiet = sharing_calls == calls;

    /* Fini twice; a finished layer does nothing. */
    EXPECT(ccdma_layer_fini(layer), CCDMA_OK);
    calls = sharing_calls;
    EXPECT(ccdma_layer_fini(layer), CCDMA_ERR_MISUSE);
    EXPECT(ccdma_attach(layer, dev_mem, sizeof dev_mem, 2, 64), CCDMA_ERR_MISUSE);
    EXPECT(ccdma_release_pools(layer), CCDMA_ERR_MISUSE);
    quiet = quiet && sharing_calls == calls && shared_pages() == 0;
    printf("misuse: every case CCDMA_ERR_MISUSE (%s); stale free left the ring shared and readable: %s; "
           "list over a live list leaked nothing: %s; no platform call for a refused handle: %s\n",
           ccdma_strerror(CCDMA_ERR_MISUSE), ring_ok ? "yes" : "NO", list_ok ? "yes" : "NO", quiet ? "yes" : "NO");
    if (!ring_ok || !list_ok || !quiet) FAIL("misuse changed something");
}

/* A raw unmap's claim is checked on the direct path too (issue 18 item 2): a guest that is not
 * confidential, so the bus address is the buffer's own and no pool slot records the mapping. A wrong
 * size, direction or address, or a second unmap, is CCDMA_ERR_MISUSE and the mapping stays live
 * (detach refused); the honest unmap works once. */
static void raw_claims(void) {
    struct ccdma_platform platform = {
        .share = p_share, .unshare = p_unshare, .cpu_ptr = p_cpu_ptr, .virt_to_phys = p_virt_to_phys,
        .ram_end = p_ram_end, .confidential = 0, .shared_bus = CCDMA_BUS_ENCODING_IDENTITY,
    };
    struct ccdma_layer *layer = up(&platform);
    struct ccdma_device *dev = (struct ccdma_device *)dev_mem;
    uint8_t *buf = ram + (BUF_PHYS - RAM_PHYS);
    uint64_t bus = 0;
    unsigned before = failures;
    EXPECT(ccdma_attach(layer, dev_mem, sizeof dev_mem, 4, 64), CCDMA_OK);
    EXPECT(ccdma_device_path(layer, dev), CCDMA_PATH_DIRECT);
    EXPECT(ccdma_map(layer, dev, buf + 100, 3000, CCDMA_BIDIRECTIONAL, &bus), CCDMA_OK);
    if (bus != BUF_PHYS + 100) FAIL("direct: bus %#llx", (unsigned long long)bus);
    EXPECT(ccdma_unmap(layer, dev, bus, 2999, CCDMA_BIDIRECTIONAL), CCDMA_ERR_MISUSE);     /* shorter */
    EXPECT(ccdma_unmap(layer, dev, bus, 3000, CCDMA_TO_DEVICE), CCDMA_ERR_MISUSE);         /* direction */
    EXPECT(ccdma_unmap(layer, dev, bus + 1, 2999, CCDMA_BIDIRECTIONAL), CCDMA_ERR_MISUSE); /* interior */
    EXPECT(ccdma_unmap(layer, dev, COH_PHYS, 64, CCDMA_BIDIRECTIONAL), CCDMA_ERR_MISUSE);  /* never mapped */
    EXPECT(ccdma_sync_for_cpu(layer, dev, bus, 0, 3001, CCDMA_BIDIRECTIONAL), CCDMA_ERR_MISUSE);
    EXPECT(ccdma_detach(layer, dev), CCDMA_ERR_BUSY); /* still live */
    EXPECT(ccdma_unmap(layer, dev, bus, 3000, CCDMA_BIDIRECTIONAL), CCDMA_OK);
    EXPECT(ccdma_unmap(layer, dev, bus, 3000, CCDMA_BIDIRECTIONAL), CCDMA_ERR_MISUSE); /* twice */
    EXPECT(ccdma_detach(layer, dev), CCDMA_OK);
    EXPECT(ccdma_layer_fini(layer), CCDMA_OK);
    printf("raw claims on the direct path: every wrong claim CCDMA_ERR_MISUSE, mapping kept: %s\n",
           failures == before ? "yes" : "NO");
}

int main(void) {
    struct ccdma_bus_encoding cca = CCDMA_BUS_ENCODING_CCA(48), sev = CCDMA_BUS_ENCODING_SEV(51),
                              identity = CCDMA_BUS_ENCODING_IDENTITY;
    io("cca", cca);
    io("sev", sev);
    io("identity", identity);
    misuse();
    raw_claims();
    printf("%u violations, %u failures\n", violations, failures);
    if (violations || failures) return 1;
    printf("OK\n");
    return 0;
}
