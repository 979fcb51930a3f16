//! Writing and clearing translation entries: batched through a list page (the layer's one page, or
//! the caller's CPU's, as [`TceBatching`](super::config::TceBatching) chose) when the platform has
//! `H_PUT_TCE_INDIRECT`, one `H_PUT_TCE` per entry otherwise; cleared with `H_STUFF_TCE`; busy
//! answers retried a bounded number of times; entries read back where the [`VerifyPolicy`] asks,
//! because a hypervisor may report success without acting.

use core::sync::atomic::Ordering;

use super::counters::IommuCounter;

use super::calls::hcall::{is_busy, H_SUCCESS};
use super::calls::{TceCalls, TCE_LIST_ENTRIES, TCE_STUFF_BATCH};
use super::config::VerifyPolicy;
use super::counters::IommuCounters;
use super::error::{IommuError, PutFailure};
use super::list_pages::ListPages;
use super::window::WindowGeometry;

/// Busy answers retried per call before giving up with [`IommuError::Busy`].
pub const MAX_BUSY_RETRIES: u32 = 16;

/// Entry programming for one call site: the platform's calls, the list pages (none in
/// [`TceBatching::PerEntry`](super::config::TceBatching::PerEntry)), the policy.
///
/// Every entry a caller hands [`TceWriter::put_entries`] may be written into a shared list page, so
/// it must name memory that is shared already (pool slots, coherent buffers) or no RAM at all.
pub(crate) struct TceWriter<'a> {
    pub calls: &'a dyn TceCalls,
    pub list: Option<&'a ListPages>,
    pub verify: VerifyPolicy,
    pub counters: &'a IommuCounters,
    /// The caller's CPU (`Platform::cpu_hint`): which per-CPU list page it tries first.
    pub cpu: Option<usize>,
}

fn bump(c: &IommuCounter, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl TceWriter<'_> {
    /// Run one call, retrying busy answers. The call is a `dyn` closure and the expected entries of
    /// [`Self::check`] too: one copy of each for every call site (issue 20's code budget), which
    /// costs an indirect call beside a hypercall.
    fn retry(&self, counter: &IommuCounter, call: &mut dyn FnMut() -> i64) -> Result<(), IommuError> {
        let mut attempt = 0;
        loop {
            bump(counter, 1);
            let rc = call();
            if rc == H_SUCCESS {
                return Ok(());
            }
            if !is_busy(rc) {
                return Err(IommuError::Hcall(rc));
            }
            attempt += 1;
            bump(&self.counters.busy_retries, 1);
            if attempt > MAX_BUSY_RETRIES {
                return Err(IommuError::Busy);
            }
            self.calls.backoff(rc, attempt);
        }
    }

    /// Read back entries `[first, first + n)` of the batch starting at `ioba`, as the policy says, and
    /// compare with `expect(i)`.
    fn check(
        &self,
        win: &WindowGeometry,
        ioba: u64,
        n: u64,
        expect: &dyn Fn(u64) -> u64,
    ) -> Result<(), IommuError> {
        let read = |i: u64| -> Result<(), IommuError> {
            let at = ioba + (i << win.page_shift);
            let mut got = 0;
            self.retry(&self.counters.get_tce, &mut || {
                let (rc, v) = self.calls.h_get_tce(win.liobn, at);
                got = v;
                rc
            })?;
            // Compare what the entry means (address and permission), not bits the platform may add.
            let meaning = !(win.page_size() - 1) | super::TCE_PCI_READ | super::TCE_PCI_WRITE;
            if got & meaning != expect(i) {
                bump(&self.counters.verify_failures, 1);
                return Err(IommuError::Verify { bus: crate::addr::BusAddr(at) });
            }
            Ok(())
        };
        let ends = match self.verify {
            VerifyPolicy::Off => return Ok(()),
            // Resolved by the caller (`per_mapping`, `entering_pools`); read back if it was not.
            VerifyPolicy::Ends | VerifyPolicy::Premap => true,
            VerifyPolicy::All => false,
        };
        // Every entry, or the first and the last: one loop, so `read` is in the code once.
        let mut i = 0;
        while i < n {
            read(i)?;
            i = if !ends {
                i + 1
            } else if i == 0 && n > 1 {
                n - 1
            } else {
                n
            };
        }
        Ok(())
    }

    /// Enter `npages` IOMMU pages from `ioba`, entry `i` given by `entry(i)` (a scatter-gather list maps several runs, and
    /// holes between them, behind one bus range: one batch of calls for all of them).
    pub(crate) fn put_entries(
        &self,
        win: &WindowGeometry,
        ioba: u64,
        npages: u64,
        entry: &dyn Fn(u64) -> u64,
    ) -> Result<(), PutFailure> {
        let mut done = 0;
        let result = self.put_batches(win, ioba, npages, entry, &mut done);
        match result {
            Ok(()) => {
                bump(&self.counters.entries_written, npages);
                bump(&self.counters.live_tces, npages);
                Ok(())
            }
            Err(err) => {
                log_put_failed(win, ioba, npages, &err);
                let clean = self.clear_entries(win, ioba, npages).is_ok();
                if !clean {
                    // The rollback failed: count the range as live, as the hypervisor may have it so.
                    bump(&self.counters.live_tces, npages);
                }
                Err(PutFailure { err, clean })
            }
        }
    }

    /// Out of line: the rollback in [`Self::put_entries`] (`clear_entries`) is not under its frame
    /// (a deferred device's first map reaches here through set-up: issue 20's stack budget).
    #[inline(never)]
    fn put_batches(
        &self,
        win: &WindowGeometry,
        ioba: u64,
        npages: u64,
        entry: &dyn Fn(u64) -> u64,
        done: &mut u64,
    ) -> Result<(), IommuError> {
        let list = self.list.filter(|_| npages > 1 && self.calls.indirect_available());
        while *done < npages {
            let at = ioba + (*done << win.page_shift);
            let base = *done;
            // A page for this batch: waited for (one shared page), or tried (per CPU) and none when
            // every page is busy: then this entry goes alone, and the next one tries again.
            match list.and_then(|l| l.acquire(self.cpu, self.counters)) {
                Some(mut page) => {
                    let n = (npages - base).min(TCE_LIST_ENTRIES as u64);
                    page.fill(n, |i| entry(base + i));
                    let phys = page.phys();
                    let r = self.retry(&self.counters.put_indirect, &mut || {
                        self.calls.h_put_tce_indirect(win.liobn, at, phys, n)
                    });
                    drop(page);
                    r?;
                    self.check(win, at, n, &|i| entry(base + i))?;
                    *done += n;
                }
                None => {
                    if list.is_some() {
                        bump(&self.counters.list_page_fallbacks, 1);
                    }
                    let v = entry(base);
                    self.retry(&self.counters.put_tce, &mut || self.calls.h_put_tce(win.liobn, at, v))?;
                    self.check(win, at, 1, &|_| v)?;
                    *done += 1;
                }
            }
        }
        Ok(())
    }

    /// Clear `npages` live entries from `ioba` with `H_STUFF_TCE`, then read back as the policy says.
    /// On failure nothing is counted cleared: the caller keeps the range live and may retry.
    pub fn clear(&self, win: &WindowGeometry, ioba: u64, npages: u64) -> Result<(), IommuError> {
        self.clear_entries(win, ioba, npages)?;
        self.counters.live_tces.fetch_sub(npages, Ordering::Relaxed);
        Ok(())
    }

    /// Clear entries without touching the live count (rollback of a write that was never counted).
    fn clear_entries(&self, win: &WindowGeometry, ioba: u64, npages: u64) -> Result<(), IommuError> {
        let mut done = 0;
        while done < npages {
            let n = (npages - done).min(TCE_STUFF_BATCH);
            let at = ioba + (done << win.page_shift);
            self.retry(&self.counters.stuff_tce, &mut || self.calls.h_stuff_tce(win.liobn, at, 0, n))?;
            // The clear was accepted: a read-back that cannot be made (unlike one that finds an
            // entry) says the change is unconfirmed, not that nothing changed.
            self.check(win, at, n, &|_| 0).map_err(|e| match e {
                IommuError::Verify { .. } => e,
                _ => IommuError::Unverified { bus: crate::addr::BusAddr(at) },
            })?;
            done += n;
        }
        bump(&self.counters.entries_cleared, npages);
        Ok(())
    }
}

/// [`TceWriter::put_entries`]'s log line, out of line: its formatting stays off the writer's frame.
#[cold]
#[inline(never)]
fn log_put_failed(win: &WindowGeometry, ioba: u64, npages: u64, err: &IommuError) {
    log::warn!(
        "ccdma: writing {npages} TCEs at {ioba:#x} (liobn {:#x}) failed: {err:?}; clearing",
        win.liobn
    );
}
