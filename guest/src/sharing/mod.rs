//! Sharing adapters: [`MemorySharing`](crate::platform::MemorySharing) built from each platform's raw
//! calls, with the retry and partial-progress rules of that platform.

pub mod pseries;
pub mod tdx;
