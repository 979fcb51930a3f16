/* ccdma in C firmware: a freestanding sketch that links against the no_std staticlib
 * (ffi/examples/firmware.sh builds, links and measures it; ffi/README.md explains).
 *
 * Identity-mapped RAM (a CPU pointer is the physical address), one bounce pool, one device. The
 * sharing calls are where a real firmware asks its hypervisor or security module (TDX MapGPA + accept,
 * SEV-SNP Page State Change + PVALIDATE, CCA RSI_IPA_STATE_SET): here they only say yes. No libc: the
 * header needs only the compiler's stddef.h, stdint.h and stdbool.h. */
#include "ccdma.h"

#define RAM_END 0x80000000ull     /* 2 GiB of guest RAM */
#define POOL_LEN (256u * 1024u)   /* 128 slots of 2 KiB */

CCDMA_ALIGNED(4096) static uint8_t pool[POOL_LEN];
CCDMA_ALIGNED(CCDMA_LAYER_ALIGN) static uint8_t layer_mem[CCDMA_LAYER_SIZE];
CCDMA_ALIGNED(CCDMA_SLOT_META_ALIGN) static uint8_t meta[CCDMA_POOL_META_SIZE(POOL_LEN)];
CCDMA_ALIGNED(CCDMA_DEVICE_ALIGN) static uint8_t dev_mem[CCDMA_DEVICE_SIZE];
static uint8_t buffer[1500];

static int convert(void *ctx, uint64_t phys, uint64_t pages, uint64_t *done) {
    (void)ctx;
    (void)phys;
    *done = pages; /* a real firmware converts [phys, phys + pages * 4096) here */
    return 0;
}
static void *cpu_ptr(void *ctx, uint64_t phys, size_t len) {
    (void)ctx;
    return phys < RAM_END && len <= RAM_END - phys ? (void *)(uintptr_t)phys : NULL;
}
static int virt_to_phys(void *ctx, const void *ptr, size_t len, uint64_t *phys) {
    (void)ctx;
    (void)len;
    *phys = (uint64_t)(uintptr_t)ptr;
    return 0;
}
static uint64_t ram_end(void *ctx) {
    (void)ctx;
    return RAM_END;
}

/* One to-device DMA of `buffer` for device 1 (a 64-bit NIC); 0 on success. */
int firmware_main(void);
int firmware_main(void) {
    const struct ccdma_platform platform = {
        .confidential = 1,
        .share = convert,
        .unshare = convert,
        .cpu_ptr = cpu_ptr,
        .virt_to_phys = virt_to_phys,
        .ram_end = ram_end,
        .shared_bus = CCDMA_BUS_ENCODING_IDENTITY, /* SEV: CCDMA_BUS_ENCODING_SEV(c_bit) */
    };
    int rc = ccdma_layer_init(layer_mem, sizeof layer_mem, &platform);
    if (rc != CCDMA_OK) return rc;
    struct ccdma_layer *layer = (struct ccdma_layer *)layer_mem;
    rc = ccdma_add_pool(layer, (uint64_t)(uintptr_t)pool, sizeof pool, meta, sizeof meta);
    if (rc < 0) return rc;
    rc = ccdma_attach(layer, dev_mem, sizeof dev_mem, 1, 64);
    if (rc != CCDMA_OK) return rc;
    struct ccdma_device *dev = (struct ccdma_device *)dev_mem;
    uint64_t bus = 0;
    rc = ccdma_map(layer, dev, buffer, sizeof buffer, CCDMA_TO_DEVICE, &bus);
    if (rc != CCDMA_OK) return rc;
    /* ... hand `bus` to the device, wait for it ... */
    rc = ccdma_unmap(layer, dev, bus, sizeof buffer, CCDMA_TO_DEVICE);
    if (rc != CCDMA_OK) return rc;
    rc = ccdma_detach(layer, dev);
    return rc != CCDMA_OK ? rc : ccdma_layer_fini(layer);
}
