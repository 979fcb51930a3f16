//! Sharing adapters: [`MemorySharing`](crate::platform::MemorySharing) built from each platform's raw
//! calls, with the retry and partial-progress rules of that platform.
//!
//! Each module has a trait of raw calls (what firmware, a test kernel or `ccdma-hv-model` implements)
//! and an adapter over it. Every adapter follows the same rules, which the layer's rollback and
//! quarantine rely on: a failed share reports every page that may have changed state (the layer makes
//! them private again), a failed unshare reports only the pages that are private *and usable* again
//! (accepted or validated; the layer quarantines the rest), allegations about progress are checked
//! against the request, and retries are bounded when they make no progress.
//!
//! | personality | call | granularity | partial progress | content after the conversion | bus address of a shared page |
//! |---|---|---|---|---|---|
//! | pseries SVM ([`pseries`]) | `UV_SHARE_PAGE` / `UV_UNSHARE_PAGE` (ultracalls 0xF130 / 0xF134) | 4 KiB pages, any count per call | none reported: a failure counts as the whole request (share) or nothing (unshare) | kept both ways (the ultravisor shares the page in place), so private data is cleared before sharing | identity |
//! | Intel TDX ([`tdx`]) | `TDG.VP.VMCALL<MapGPA>` (shared bit), then `TDG.MEM.PAGE.ACCEPT` per page to private | 4 KiB pages, a range per call | `RETRY` with a resume address: resumed, bounded without progress; an error counts as the whole request (share) | lost on the way to private (zero); unusable until accepted | identity (the shared bit is not part of the DMA address as modelled here) |
//! | AMD SEV-SNP ([`snp`]) | `PVALIDATE` rescind, then a Page State Change (GHCB MSR protocol for one page, GHCB buffer with up to 253 entries otherwise); back: PSC private, then `PVALIDATE` per page | 4 KiB entries | the hypervisor advances `cur_entry`: resumed, bounded without progress; header checked; an error counts as the whole request (share) | undefined both ways (the shared view is ciphertext, the private one after reassignment too); unusable until validated; "no change" from `PVALIDATE` stops and quarantines | the C-bit cleared ([`BusEncoding::sev`](crate::BusEncoding::sev)) |
//! | Arm CCA realm ([`cca`]) | `RSI_IPA_STATE_SET(base, top, RIPAS, flags)`: `EMPTY` to share, `RAM` (no change of `DESTROYED`) to make private | 4 KiB granules, a range per call | the RMM returns the new base: resumed, bounded without progress; `RSI_REJECT` stops; progress is trusted (the RMM reports it), checked anyway | undefined both ways (the alias is other memory); the RMM accepts `RAM` itself | the unprotected alias: top IPA bit set ([`BusEncoding::cca`](crate::BusEncoding::cca)) |
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

pub mod cca;
pub mod pseries;
pub mod snp;
pub mod tdx;

#[cfg(test)]
mod tests;
