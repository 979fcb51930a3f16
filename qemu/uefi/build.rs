//! The IOMMU driver must stay resident after its entry point returns: link it as a boot-service
//! driver (an application image is unloaded when its entry point returns).
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("uefi") {
        println!("cargo:rustc-link-arg-bin=ccdma-iommu=/subsystem:efi_boot_service_driver");
    }
}
