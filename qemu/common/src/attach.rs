//! Attaching a kernel's device and checking what ccdma did, the same way in both kernels: the
//! `NAME.attach` check (the path ccdma chose against the one the configuration expects, and why) and
//! the `NAME.init` check (the driver came up on its coherent queue pages).

use core::fmt;
use core::sync::atomic::Ordering;

use ccdma::{Device, DeviceConfig, DmaPath, PathReason};

use crate::binding::{attach, KernelBinding, KernelDma};
use crate::report::Report;

/// Why ccdma chose a device's path, in words: the layer's recorded reason (IOMMU paths, accepted
/// devices), else the reason of a plain path, else the path's name.
pub struct Reason<'a, B: KernelBinding>(pub &'a Device, core::marker::PhantomData<B>);

impl<'a, B: KernelBinding> Reason<'a, B> {
    /// The reason for `device`, attached through binding `B`'s layer.
    pub fn of(device: &'a Device) -> Self {
        Reason(device, core::marker::PhantomData)
    }
}

impl<B: KernelBinding> fmt::Display for Reason<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let Ok(layer) = <B::Dma as KernelDma>::layer() else {
            return write!(f, "{}", self.0.path().name());
        };
        match layer.path_reason(self.0).or_else(|| PathReason::of_plain(self.0.path())) {
            Some(reason) => write!(f, "{reason}"),
            None => write!(f, "{}", self.0.path().name()),
        }
    }
}

/// Attach binding `B`'s device with `config` and check it got `expected`; `what` describes the
/// device (function, mask, window) in the check's line. `None` (reported) when the attach failed.
pub fn attach_checked<B: KernelBinding>(
    report: &mut Report,
    config: DeviceConfig,
    expected: DmaPath,
    what: impl fmt::Display,
) -> Option<&'static Device> {
    let device = match attach::<B>(config) {
        Ok(device) => device,
        Err(error) => {
            report.fail(format_args!("{}.attach", B::NAME), error);
            return None;
        }
    };
    let ok = device.path() == expected;
    report.expect(
        format_args!("{}.attach", B::NAME),
        ok,
        format_args!(
            "{what}: path {} ({}){}",
            device.path().name(),
            Reason::<B>::of(device),
            if ok { "" } else { " - expected another" }
        ),
    );
    Some(device)
}

/// Report whether binding `B`'s driver came up (`NAME.init`), with the coherent pages its queues took.
pub fn init_checked<B: KernelBinding, D, E: fmt::Display>(
    report: &mut Report,
    driver: Result<D, E>,
) -> Option<D> {
    match driver {
        Ok(driver) => {
            let pages = B::stats().coherent_pages.load(Ordering::Relaxed);
            report.pass(
                format_args!("{}.init", B::NAME),
                format_args!("driver up, {pages} coherent page(s) for its queues"),
            );
            Some(driver)
        }
        Err(error) => {
            report.fail(format_args!("{}.init", B::NAME), error);
            None
        }
    }
}
