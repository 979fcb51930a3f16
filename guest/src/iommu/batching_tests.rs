//! Unit tests of the entry writer's batching against a recording fake of the PAPR calls: which calls
//! a batch makes with no list page, with its page free, and with every page busy (the fallback a
//! second caller on the same CPU takes), and what a failure on the fallback path leaves behind.

extern crate std;
use std::sync::Mutex;
use std::vec::Vec;

use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use super::calls::hcall::{H_FUNCTION, H_HARDWARE, H_SUCCESS};
use super::calls::{DdwQuery, TceCalls};
use super::config::VerifyPolicy;
use super::counters::IommuCounters;
use super::error::{IommuError, PutFailure};
use super::list_pages::{ListMode, ListPages};
use super::tce::TceWriter;
use super::window::WindowGeometry;
use crate::addr::PhysAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Put { ioba: u64, tce: u64 },
    Indirect { ioba: u64, list: u64, count: u64 },
    Stuff { ioba: u64, count: u64 },
}

/// Records every call; fails the `fail_put`-th `H_PUT_TCE` (1-based) if set.
struct Fake {
    log: Mutex<Vec<Call>>,
    fail_put: Option<usize>,
}

impl Fake {
    fn new(fail_put: Option<usize>) -> Fake {
        Fake { log: Mutex::new(Vec::new()), fail_put }
    }
    fn calls(&self) -> Vec<Call> {
        self.log.lock().unwrap().clone()
    }
}

impl TceCalls for Fake {
    fn default_window(&self, _device: u32) -> Option<WindowGeometry> {
        None
    }
    fn indirect_available(&self) -> bool {
        true
    }
    fn h_put_tce(&self, _liobn: u32, ioba: u64, tce: u64) -> i64 {
        let mut log = self.log.lock().unwrap();
        log.push(Call::Put { ioba, tce });
        let puts = log.iter().filter(|c| matches!(c, Call::Put { .. })).count();
        if Some(puts) == self.fail_put {
            H_HARDWARE
        } else {
            H_SUCCESS
        }
    }
    fn h_get_tce(&self, _liobn: u32, _ioba: u64) -> (i64, u64) {
        (H_SUCCESS, 0)
    }
    fn h_put_tce_indirect(&self, _liobn: u32, ioba: u64, list: PhysAddr, count: u64) -> i64 {
        self.log.lock().unwrap().push(Call::Indirect { ioba, list: list.0, count });
        H_SUCCESS
    }
    fn h_stuff_tce(&self, _liobn: u32, ioba: u64, _value: u64, count: u64) -> i64 {
        self.log.lock().unwrap().push(Call::Stuff { ioba, count });
        H_SUCCESS
    }
    fn ddw_query(&self, _device: u32) -> Result<DdwQuery, i64> {
        Err(H_FUNCTION)
    }
    fn ddw_create(&self, _device: u32, _page_shift: u32, _window_shift: u32) -> Result<WindowGeometry, i64> {
        Err(H_FUNCTION)
    }
    fn ddw_remove(&self, _device: u32, _liobn: u32) -> i64 {
        0
    }
}

const WIN: WindowGeometry = WindowGeometry { liobn: 7, start: 0, size: 1 << 30, page_shift: 12 };
const LIST: u64 = 0x50_0000;

fn entry(i: u64) -> u64 {
    (0x1000_0000 + (i << 12)) | 1
}

fn writer<'a>(calls: &'a Fake, list: Option<&'a ListPages>, c: &'a IommuCounters) -> TceWriter<'a> {
    TceWriter { calls, list, verify: VerifyPolicy::Off, counters: c, cpu: Some(0) }
}

fn one_page(buf: &mut [u8]) -> ListPages {
    let cpu = NonNull::new(buf.as_mut_ptr()).unwrap();
    // SAFETY: `buf` is one page (u64-aligned: a Vec<u64>'s bytes) that outlives the pages.
    unsafe { ListPages::new(PhysAddr(LIST), cpu, 1, ListMode::PerCpu) }
}

#[test]
fn no_list_page_means_one_put_per_entry() {
    let (fake, c) = (Fake::new(None), IommuCounters::default());
    writer(&fake, None, &c).put_entries(&WIN, 0x4000, 3, &entry).unwrap();
    let want: Vec<Call> = (0..3).map(|i| Call::Put { ioba: 0x4000 + (i << 12), tce: entry(i) }).collect();
    assert_eq!(fake.calls(), want);
    assert_eq!(c.list_page_fallbacks.load(Ordering::Relaxed), 0, "no page to fall back from");
    assert_eq!(c.live_tces.load(Ordering::Relaxed), 3);
}

#[test]
fn a_free_page_takes_the_batch_in_one_call_and_a_busy_one_falls_back_per_entry() {
    let mut buf = std::vec![0u64; 512];
    // SAFETY: viewing the u64 buffer as its bytes.
    let bytes = unsafe { core::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), 4096) };
    let pages = one_page(bytes);
    let (fake, c) = (Fake::new(None), IommuCounters::default());
    writer(&fake, Some(&pages), &c).put_entries(&WIN, 0x4000, 3, &entry).unwrap();
    assert_eq!(fake.calls(), [Call::Indirect { ioba: 0x4000, list: LIST, count: 3 }]);
    // Another caller holds the only page (it claimed the same CPU): the batch does not wait.
    let held = pages.acquire(Some(0), &c).unwrap();
    writer(&fake, Some(&pages), &c).put_entries(&WIN, 0x8000, 3, &entry).unwrap();
    let calls = fake.calls();
    assert_eq!(calls.len(), 4);
    assert!(calls[1..].iter().all(|c| matches!(c, Call::Put { .. })), "{calls:?}");
    assert_eq!(c.list_page_fallbacks.load(Ordering::Relaxed), 3);
    drop(held);
    assert_eq!(u64::from_be(buf[2]), entry(2), "the first batch's entries are in the page");
}

#[test]
fn a_failing_fallback_put_clears_the_whole_range_once() {
    let mut buf = std::vec![0u64; 512];
    // SAFETY: viewing the u64 buffer as its bytes.
    let bytes = unsafe { core::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), 4096) };
    let pages = one_page(bytes);
    let (fake, c) = (Fake::new(Some(3)), IommuCounters::default());
    let _held = pages.acquire(Some(0), &c).unwrap();
    let r = writer(&fake, Some(&pages), &c).put_entries(&WIN, 0x4000, 5, &entry);
    assert_eq!(r, Err(PutFailure { err: IommuError::Hcall(H_HARDWARE), clean: true }));
    let calls = fake.calls();
    assert_eq!(calls.last(), Some(&Call::Stuff { ioba: 0x4000, count: 5 }), "{calls:?}");
    assert_eq!(calls.iter().filter(|c| matches!(c, Call::Put { .. })).count(), 3);
    assert_eq!(c.live_tces.load(Ordering::Relaxed), 0);
    assert_eq!(c.entries_cleared.load(Ordering::Relaxed), 5);
}
