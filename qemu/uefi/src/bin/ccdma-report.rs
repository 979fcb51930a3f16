//! `ccdma-report.efi`: asks the ccdma IOMMU driver for its report (printed on the console).
#![cfg_attr(target_os = "uefi", no_std, no_main)]

#[cfg(not(target_os = "uefi"))]
fn main() {}

#[cfg(target_os = "uefi")]
mod app {
    use core::ffi::c_void;
    use core::ptr;
    use r_efi::efi;

    /// Must match the driver's `REPORT_GUID`.
    const REPORT_GUID: efi::Guid = efi::Guid::from_fields(
        0x7c3a_d0b1,
        0x5e2f,
        0x4c8a,
        0x9d,
        0x41,
        &[0x63, 0xcc, 0xd4, 0xa0, 0x17, 0x23],
    );

    #[repr(C)]
    struct ReportProtocol {
        revision: u64,
        print: extern "efiapi" fn() -> efi::Status,
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        loop {
            core::hint::spin_loop();
        }
    }

    #[export_name = "efi_main"]
    extern "efiapi" fn efi_main(_image: efi::Handle, st: *mut efi::SystemTable) -> efi::Status {
        // SAFETY: the firmware passes a valid system table with boot services to an application.
        let bs = unsafe { &*(*st).boot_services };
        let mut guid = REPORT_GUID;
        let mut proto: *mut c_void = ptr::null_mut();
        if (bs.locate_protocol)(&mut guid, ptr::null_mut(), &mut proto) != efi::Status::SUCCESS
            || proto.is_null()
        {
            return efi::Status::NOT_FOUND;
        }
        // SAFETY: the protocol under REPORT_GUID is the driver's ReportProtocol (same layout).
        unsafe { ((*proto.cast::<ReportProtocol>()).print)() }
    }
}
