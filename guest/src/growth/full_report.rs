//! Recording and reading the layer's last "pool full" report ([`crate::diagnostics`] holds its types).

use crate::device::Device;
use crate::diagnostics::{GrowthVerdict, PoolFill, PoolFullReport};
use crate::growth::state::LastFull;
use crate::layer::Cold;
use crate::layer::DmaLayer;
use crate::platform::Platform;

impl<'a, 'm, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    Cold<'a, 'm, POOLS, DOMAINS, AREAS>
{
    /// [`DmaLayer::last_pool_full`], over the platform as `&dyn Platform`.
    pub(crate) fn last_pool_full_dyn(&self) -> Option<PoolFullReport> {
        let _masked = self.masked();
        self.growth.last_full.lock().map(|r| r.report())
    }

    /// Kept as the layer's `LastFull` directly (its `POOLS` fills), no `MAX_POOLS` report built and
    /// copied into it: one copy of the fills fewer (`bash scripts/budgets.sh`, issue 20).
    pub(crate) fn report_full(&self, dev: &Device, len: usize, growth: GrowthVerdict) {
        let mut r =
            LastFull { device: dev.config.id, len, fills: [PoolFill::default(); POOLS], npools: 0, growth };
        for ((i, p), fill) in self.pools.iter().zip(r.fills.iter_mut()) {
            *fill = PoolFill {
                index: i as u8,
                slots: p.slots() as u32,
                in_use: p.slots_in_use() as u32,
                bytes: p.len() as u64,
            };
            r.npools += 1;
        }
        // The report's text (a MAX_POOLS copy) only when warnings are logged.
        if log::log_enabled!(log::Level::Warn) {
            log::warn!("ccdma: {}", r.report());
        }
        *self.growth.last_full.lock() = Some(r);
    }
}

impl<'m, P: Platform, const POOLS: usize, const DOMAINS: usize, const AREAS: usize>
    DmaLayer<'m, P, POOLS, DOMAINS, AREAS>
{
    /// The last "pool full" failure, if any (always `None` without the `pool-full-report` part).
    pub fn last_pool_full(&self) -> Option<PoolFullReport> {
        self.cold().last_pool_full_dyn()
    }
}
