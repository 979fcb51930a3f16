//! Sharing adapters: [`MemorySharing`](crate::platform::MemorySharing) built from each platform's raw
//! calls, with the retry and partial-progress rules of that platform.
//!
//! ```
//! use ccdma::sharing::pseries::UltravisorSharing;
//! use ccdma::{MemorySharing, PhysAddr};
//! # use ccdma_hv_model::{HvConfig, Hypervisor, PageState};
//! # let hv = Hypervisor::new(HvConfig::pseries(1 << 30));
//! // `hv` stands for the firmware's `UV_SHARE_PAGE`/`UV_UNSHARE_PAGE` ultracalls (`Ultracalls`).
//! let sharing = UltravisorSharing::new(&hv);
//! sharing.share(PhysAddr(0x10_0000), 2)?;
//! assert_eq!(hv.memory().state(0x10_1000), PageState::Shared);
//! sharing.unshare(PhysAddr(0x10_0000), 2)?;
//! assert_eq!(hv.memory().state(0x10_1000), PageState::Private);
//! # Ok::<(), ccdma::PartialSharing>(())
//! ```

pub mod pseries;
pub mod tdx;
