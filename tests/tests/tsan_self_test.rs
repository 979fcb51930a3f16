//! The deliberate data race that shows `scripts/tsan.sh` can fail (`CCDMA_TSAN_SELF_TEST=1`).
//! Ignored everywhere else: it is undefined behaviour on purpose and proves nothing outside TSan.

use std::cell::UnsafeCell;

struct Racy(UnsafeCell<u64>);
// SAFETY: deliberately false: two threads write the cell without synchronisation, which is the race
// ThreadSanitizer must report. The test is ignored unless scripts/tsan.sh asks for it.
unsafe impl Sync for Racy {}
// SAFETY: as above (the cell holds a plain u64; sending it is harmless, sharing it is the race).
unsafe impl Send for Racy {}

#[test]
#[ignore = "a deliberate data race: only scripts/tsan.sh runs it, to see ThreadSanitizer fail"]
fn thread_sanitizer_reports_a_deliberate_race() {
    let racy = Racy(UnsafeCell::new(0));
    let racy = &racy;
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(move || {
                for i in 0..1000 {
                    // SAFETY: none: this is the unsynchronised write TSan must catch (see above).
                    unsafe { *racy.0.get() = std::hint::black_box(i) };
                }
            });
        }
    });
    // SAFETY: the threads are joined; nothing else reads the cell.
    assert!(unsafe { *racy.0.get() } < 1000);
}
