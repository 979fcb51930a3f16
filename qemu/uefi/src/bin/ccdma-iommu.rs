//! A UEFI boot-service driver that installs `EDKII_IOMMU_PROTOCOL` backed by ccdma.
//!
//! PciHostBridgeDxe forwards every `EFI_PCI_ROOT_BRIDGE_IO_PROTOCOL.Map/Unmap/AllocateBuffer/
//! FreeBuffer` to the IOMMU protocol once one is installed (a protocol notify on
//! `gEdkiiIoMmuProtocolGuid`, see qemu/README.md), and PciBusDxe calls `SetAttribute` with the
//! device's handle after each `Map`. So after `load ccdma-iommu.efi` and `reconnect -r`, OVMF's own
//! drivers (VirtioBlkDxe, VirtioScsiDxe, ...) bounce their DMA through ccdma: streaming maps through
//! a pool of shared pages, common buffers as ccdma coherent buffers.
//!
//! The platform: pages from boot services (identity-mapped, so CPU pointers are physical
//! addresses), a ledger of shared pages standing in for the host, the device's DMA mask from the
//! operation (PciBusDxe and the root bridge downgrade 64-bit operations the device or bridge cannot
//! use). Operations carry no device, so there are two ccdma devices: one with a 32-bit mask, one
//! with a 64-bit mask; `SetAttribute` attributes each mapping to the PCI device it names.
//!
//! A second protocol (`CCDMA_REPORT_GUID`) lets `ccdma-report.efi` print the report.
#![cfg_attr(target_os = "uefi", no_std, no_main)]

#[cfg(not(target_os = "uefi"))]
fn main() {}

#[cfg(target_os = "uefi")]
#[path = "../driver.rs"]
mod driver;
